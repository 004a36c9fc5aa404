"""OpenAI chat requests as Anthropic Messages requests.

Apps speak OpenAI's Chat Completions; Anthropic speaks its Messages API. A request Anthropic
cannot take is refused here, before any connection is made, with the parameter at fault named
(never its value: it may be anything the app sent).
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from byorouter_common.errors import ByoError

# Anthropic requires max_tokens; OpenAI apps often leave it out and expect "as long as needed".
DEFAULT_MAX_TOKENS: Final = 4096
_TOOL_CHOICES: Final[dict[str, dict[str, Any]]] = {
    "auto": {"type": "auto"},
    "required": {"type": "any"},
    "none": {"type": "none"},
}
_EMPTY_SCHEMA: Final[dict[str, Any]] = {"type": "object", "properties": {}}

Block = dict[str, Any]
Content = str | list[Block]


def _invalid(message: str, param: str, code: str = "invalid_request") -> ByoError:
    # Messages name where the problem is, never the rejected value: it may be anything.
    return ByoError(400, code, message, param=param)


def _unsupported(message: str, param: str) -> ByoError:
    return _invalid(message, param, "unsupported_parameter")


def to_messages_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The Anthropic Messages request for an OpenAI chat request `body`, for upstream `model`."""
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        raise _invalid("The request has no messages.", "messages")
    system, turns = _translate_messages(messages)
    if not turns:
        # Anthropic refuses a request of system messages only; say so before connecting.
        raise _invalid("The request has no user or assistant message.", "messages")
    request: dict[str, Any] = {
        "model": model,
        "messages": turns,
        "max_tokens": _max_tokens(body),
    }
    if system is not None:
        request["system"] = system
    stop = _stop_sequences(body.get("stop"))
    if stop:
        request["stop_sequences"] = stop
    for field in ("temperature", "top_p", "top_k"):
        value = body.get(field)
        if value is not None:
            request[field] = value
    n = body.get("n")
    if n is not None and n != 1:
        raise _unsupported("The anthropic provider answers with one choice only (n=1).", "n")
    json_tool = _response_format_tool(body.get("response_format"))
    thinking = _thinking(body)
    if thinking is not None:
        _apply_thinking(request, thinking, body, json_tool is not None)
    tools = body.get("tools")
    if json_tool is not None:
        if tools:
            raise _unsupported(
                "The anthropic provider answers response_format with a forced call of a tool "
                "made from the schema, so it cannot be combined with tools; leave one out.",
                "response_format",
            )
        request["tools"] = [json_tool]
        request["tool_choice"] = {"type": "tool", "name": json_tool["name"]}
    elif tools is not None:
        translated = _tools(tools)
        if translated:
            request["tools"] = translated
            choice = _tool_choice(body.get("tool_choice"))
            if body.get("parallel_tool_calls") is False:
                choice = dict(choice or _TOOL_CHOICES["auto"])
                if choice["type"] != "none":
                    choice["disable_parallel_tool_use"] = True
            if choice is not None:
                request["tool_choice"] = choice
    user = body.get("user")
    if type(user) is str and user:
        # OpenAI's `user` and Anthropic's metadata.user_id are both an opaque end-user id.
        request["metadata"] = {"user_id": user}
    if body.get("stream") is True:
        request["stream"] = True
    return request


# What reasoning_effort asks of Anthropic's extended thinking, in budget tokens (1024 is the least
# Anthropic takes).
THINKING_BUDGETS: Final[dict[str, int]] = {
    "minimal": 1024,
    "low": 1024,
    "medium": 2048,
    "high": 4096,
}
# The tool a `json_object` answer is forced through: any JSON object fits.
_ANY_OBJECT: Final[dict[str, Any]] = {"type": "object", "additionalProperties": True}
JSON_TOOL_NAME: Final = "json_response"
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def json_tool_name(body: dict[str, Any]) -> str | None:
    """The tool a JSON `response_format` is forced through (its input is the answer), if any."""
    response_format = body.get("response_format")
    if type(response_format) is not dict or response_format.get("type") == "text":
        return None
    tool = _response_format_tool(response_format)
    return tool["name"] if tool is not None else None


def _response_format_tool(response_format: Any) -> Block | None:
    """`json_schema` and `json_object` as the major gateways emulate them on Anthropic: one tool
    whose input_schema is the wanted schema, called by force; None for text."""
    if response_format is None:
        return None
    kind = response_format.get("type") if type(response_format) is dict else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {
            "name": JSON_TOOL_NAME,
            "description": "Answer with a JSON object.",
            "input_schema": _ANY_OBJECT,
        }
    if kind != "json_schema":
        raise _invalid(
            'response_format.type must be "text", "json_object" or "json_schema".',
            "response_format",
        )
    spec = response_format.get("json_schema")
    if type(spec) is not dict:
        raise _invalid(
            "response_format.json_schema must be an object with a name and a schema.",
            "response_format",
        )
    schema = spec.get("schema")
    if schema is None:
        schema = _ANY_OBJECT
    if type(schema) is not dict or schema.get("type", "object") != "object":
        raise _unsupported(
            "The anthropic provider needs response_format.json_schema.schema to describe a JSON "
            'object ("type": "object"); wrap other values in an object property.',
            "response_format",
        )
    name = spec.get("name")
    tool: Block = {
        "name": name if type(name) is str and _TOOL_NAME.match(name) else JSON_TOOL_NAME,
        "input_schema": schema,
    }
    description = spec.get("description")
    tool["description"] = (
        description
        if type(description) is str and description
        else "Answer with JSON that matches this schema."
    )
    return tool


def _thinking(body: dict[str, Any]) -> dict[str, Any] | None:
    """Anthropic's `thinking` from the app's own `thinking` (Anthropic's shape, passed on) or
    OpenAI's `reasoning_effort`; None when neither asks for it."""
    thinking = body.get("thinking")
    if thinking is not None:
        budget = thinking.get("budget_tokens") if type(thinking) is dict else None
        kind = thinking.get("type") if type(thinking) is dict else None
        if kind == "disabled":
            return None
        if kind != "enabled" or type(budget) is not int or budget < 1024:
            raise _invalid(
                'thinking must be {"type": "enabled", "budget_tokens": <at least 1024>}.',
                "thinking",
            )
        return {"type": "enabled", "budget_tokens": budget}
    effort = body.get("reasoning_effort")
    if effort is None or effort == "none":
        return None
    if type(effort) is not str or effort not in THINKING_BUDGETS:
        raise _invalid(
            'reasoning_effort must be "none", "minimal", "low", "medium" or "high".',
            "reasoning_effort",
        )
    return {"type": "enabled", "budget_tokens": THINKING_BUDGETS[effort]}


def _apply_thinking(
    request: dict[str, Any], thinking: dict[str, Any], body: dict[str, Any], forced_tool: bool
) -> None:
    """Turn thinking on, with the limits Anthropic sets on it said in advance."""
    if forced_tool:
        raise _unsupported(
            "Anthropic does not allow thinking while a tool call is forced, which is how the "
            "anthropic provider answers response_format; ask for one or the other.",
            "response_format",
        )
    budget: int = thinking["budget_tokens"]
    if "max_tokens" in body or "max_completion_tokens" in body:
        if request["max_tokens"] <= budget:
            raise _invalid(
                f"max_tokens must be more than the thinking budget ({budget} tokens): thinking "
                "counts toward it on Anthropic.",
                "max_tokens",
            )
    else:
        # The budget is spent before the answer begins; the answer keeps the usual room.
        request["max_tokens"] = budget + DEFAULT_MAX_TOKENS
    temperature = request.get("temperature")
    if temperature is not None and temperature != 1:
        raise _unsupported(
            "Anthropic takes only temperature 1 while thinking; leave temperature out.",
            "temperature",
        )
    if "top_k" in request:
        raise _unsupported("Anthropic takes no top_k while thinking; leave it out.", "top_k")
    request["thinking"] = thinking


def _translate_messages(
    messages: list[Any],
) -> tuple[Content | None, list[dict[str, Any]]]:
    """(system, turns): system and developer messages lifted out, the rest as Anthropic turns."""
    system: list[Block] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if type(message) is not dict:
            raise _invalid(f"{where} is not a message object.", "messages")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_system_blocks(message.get("content"), where))
        elif role == "user":
            _append_turn(turns, "user", _user_content(message.get("content"), where))
        elif role == "assistant":
            content = _assistant_content(message, where)
            # An empty assistant turn (no text, no tool calls) is refused by Anthropic; it adds
            # nothing, so it is left out.
            if content:
                _append_turn(turns, "assistant", content)
        elif role == "tool":
            # Tool results are user content to Anthropic; consecutive ones merge into one turn.
            _append_turn(turns, "user", [_tool_result(message, where)])
        else:
            raise _unsupported(
                f"{where} has a role the anthropic provider does not support.", "messages"
            )
    if not system:
        return None, turns
    if len(system) == 1 and "cache_control" not in system[0]:
        return system[0]["text"], turns
    return system, turns


def _append_turn(turns: list[dict[str, Any]], role: str, content: Content) -> None:
    """Add a turn, merging it into the previous one of the same role: Anthropic wants turns to
    alternate between user and assistant."""
    if turns and turns[-1]["role"] == role:
        previous = turns[-1]
        previous["content"] = _as_blocks(previous["content"]) + _as_blocks(content)
        return
    turns.append({"role": role, "content": content})


def _as_blocks(content: Content) -> list[Block]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _system_blocks(content: Any, where: str) -> list[Block]:
    if type(content) is str:
        return [{"type": "text", "text": content}] if content else []
    if type(content) is list:
        return [_text_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
    raise _invalid(f"{where} has no text content.", "messages")


def _text_part(part: Any, where: str) -> Block:
    if type(part) is not dict or part.get("type") != "text" or type(part.get("text")) is not str:
        raise _invalid(f"{where} must be a text content part.", "messages")
    block: Block = {"type": "text", "text": part["text"]}
    if "cache_control" in part:
        # Anthropic's prompt caching marker, which some apps already set on OpenAI parts.
        block["cache_control"] = part["cache_control"]
    return block


def _user_content(content: Any, where: str) -> Content:
    if type(content) is str:
        return content
    if type(content) is list and content:
        return [_content_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
    raise _invalid(f"{where} has no content.", "messages")


def _content_part(part: Any, where: str) -> Block:
    kind = part.get("type") if type(part) is dict else None
    if kind == "text":
        return _text_part(part, where)
    if kind == "image_url":
        return _image(part.get("image_url"), where)
    raise _unsupported(
        f"{where}: only text and image_url content parts are supported by the anthropic provider.",
        "messages",
    )


def _image(image_url: Any, where: str) -> Block:
    """An image block from an OpenAI image_url: a data: URL inline (base64), else by URL."""
    url = image_url.get("url") if type(image_url) is dict else image_url
    if type(url) is not str:
        raise _invalid(f"{where} has no image URL.", "messages")
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, *params = header.split(";")
        if not comma or "base64" not in params or not media_type.startswith("image/"):
            raise _invalid(f"{where} is not a base64 image data: URL.", "messages")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _invalid(f"{where} must be an http(s) or data: URL.", "messages")


def _assistant_content(message: dict[str, Any], where: str) -> Content:
    content = message.get("content")
    tool_calls = message.get("tool_calls")
    blocks: list[Block] = []
    if type(content) is str:
        if not tool_calls:
            return content
        if content:
            blocks.append({"type": "text", "text": content})
    elif type(content) is list:
        for j, part in enumerate(content):
            # An assistant's earlier refusal is text to Anthropic.
            if type(part) is dict and part.get("type") == "refusal":
                part = {"type": "text", "text": part.get("refusal")}
            blocks.append(_text_part(part, f"{where}.content[{j}]"))
    elif content is not None:
        raise _invalid(f"{where} has content of an unknown shape.", "messages")
    if tool_calls is not None:
        if type(tool_calls) is not list:
            raise _invalid(f"{where}.tool_calls must be a list.", "messages")
        blocks.extend(
            _tool_use(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(tool_calls)
        )
    return blocks


def _tool_use(call: Any, where: str) -> Block:
    function = call.get("function") if type(call) is dict else None
    if (
        type(function) is not dict
        or type(call.get("id")) is not str
        or type(function.get("name")) is not str
    ):
        raise _invalid(f"{where} must have an id and a function name.", "messages")
    arguments = function.get("arguments")
    if arguments is None or arguments == "":
        tool_input: Any = {}
    elif type(arguments) is str:
        try:
            tool_input = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            tool_input = None
    else:
        tool_input = None
    if type(tool_input) is not dict:
        raise _invalid(f"{where}.function.arguments must be a JSON object.", "messages")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": tool_input}


def _tool_result(message: dict[str, Any], where: str) -> Block:
    tool_use_id = message.get("tool_call_id")
    if type(tool_use_id) is not str or not tool_use_id:
        raise _invalid(f"{where} has no tool_call_id.", "messages")
    block: Block = {"type": "tool_result", "tool_use_id": tool_use_id}
    content = message.get("content")
    if content is None or content == "":
        return block
    block["content"] = _user_content(content, where)
    return block


def _max_tokens(body: dict[str, Any]) -> int:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise _invalid(f"{field} must be a positive integer.", field)
        return value
    return DEFAULT_MAX_TOKENS


def _stop_sequences(stop: Any) -> list[str]:
    if stop is None:
        return []
    if type(stop) is str:
        return [stop] if stop else []
    if type(stop) is list and all(type(s) is str for s in stop):
        return [s for s in stop if s]
    raise _invalid("stop must be a string or a list of strings.", "stop")


def _tools(tools: Any) -> list[Block]:
    if type(tools) is not list:
        raise _invalid("tools must be a list.", "tools")
    translated: list[Block] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if type(tool) is dict else None
        if (
            type(tool) is not dict
            or tool.get("type", "function") != "function"
            or type(function) is not dict
            or type(function.get("name")) is not str
        ):
            raise _unsupported(
                f"tools[{i}] must be a function tool with a name; the anthropic provider "
                "supports no other tool types.",
                "tools",
            )
        parameters = function.get("parameters")
        block: Block = {
            "name": function["name"],
            "input_schema": parameters if type(parameters) is dict else _EMPTY_SCHEMA,
        }
        description = function.get("description")
        if type(description) is str and description:
            block["description"] = description
        translated.append(block)
    return translated


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if type(choice) is str and choice in _TOOL_CHOICES:
        return dict(_TOOL_CHOICES[choice])
    if type(choice) is dict and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if type(function) is dict else None
        if type(name) is str and name:
            return {"type": "tool", "name": name}
    raise _invalid(
        'tool_choice must be "auto", "required", "none" or a function to call.', "tool_choice"
    )
