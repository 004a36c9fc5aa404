"""The caller's side of the router protocol for tests, and the stand-in for keystore.

`KeystoreStub` is TEMPORARY: see conftest.py for how to swap in the real keystore.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from byorouter_common.bus import Bus, ReplyStream
from byorouter_common.contracts import HDR_KIND, HDR_REQUEST_ID
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.router import CHAT, encode_chat_request
from byorouter_common.errors import ByoError, not_found
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import SecretStr

# The router under test: timeouts short enough that timeout tests finish quickly, long enough
# for a loaded CI machine.
READ_TIMEOUT_S = 2.0
KEEPALIVE_S = 0.2


@dataclass
class KeystoreStub:
    """Answers CREDENTIALS_RESOLVE like keystore: another app's connection is simply not found."""

    connections: dict[str, ks.ResolvedConnection] = field(default_factory=dict)
    lookups: dict[str, int] = field(default_factory=dict)
    delay_s: float = 0.0

    def add(
        self, providers: list[ks.ResolvedProvider], *, fallback_to_default: bool = False
    ) -> ks.ConnectionRef:
        ref = ks.ConnectionRef(
            app_id="app_" + secrets.token_hex(8), connection_id="conn_" + secrets.token_hex(12)
        )
        self.connections[ref.connection_id] = ks.ResolvedConnection(
            connection_id=ref.connection_id,
            app_id=ref.app_id,
            fallback_to_default=fallback_to_default,
            providers=providers,
        )
        return ref

    async def answer(self, nc: NatsClient, msg: Msg) -> None:
        ref = ks.ConnectionRef.model_validate_json(msg.data)
        self.lookups[ref.connection_id] = self.lookups.get(ref.connection_id, 0) + 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        found = self.connections.get(ref.connection_id)
        if found is None or found.app_id != ref.app_id:
            error = not_found("Connection not found.", code="connection_not_found")
            await nc.publish(msg.reply, error.to_json(), headers={HDR_KIND: "error"})
        else:
            await nc.publish(
                msg.reply, found.model_dump_json().encode(), headers={HDR_KIND: "result"}
            )


def provider(
    name: ks.ProviderName, base_url: str | None, key: str | None = None, priority: int = 0
) -> ks.ResolvedProvider:
    return ks.ResolvedProvider(
        provider=name,
        api_key=SecretStr(key) if key is not None else None,
        base_url=base_url,
        preferred_model=None,
        priority=priority,
    )


@dataclass
class ChatAnswer:
    """Everything the router sent back for one request, in order."""

    kinds: list[str]
    start: dict[str, Any] | None
    chunks: list[bytes]
    end: dict[str, Any] | None
    error: ByoError | None

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every chat.completion.chunk object the chunks carried."""
        return [orjson.loads(line) for chunk in self.chunks for line in chunk.split(b"\n")]

    @property
    def text(self) -> str:
        return "".join(
            choice["delta"].get("content") or ""
            for event in self.events
            for choice in event["choices"]
        )


async def open_chat(
    bus: Bus,
    ref: ks.ConnectionRef,
    body: dict[str, Any],
    *,
    request_id: str | None = None,
    idle_timeout_s: float | None = None,
) -> ReplyStream:
    request_id = request_id or "req_" + secrets.token_hex(8)
    data = encode_chat_request(request_id, ref.app_id, ref.connection_id, orjson.dumps(body))
    return await bus.stream(
        CHAT.subject, data, headers={HDR_REQUEST_ID: request_id}, idle_timeout_s=idle_timeout_s
    )


async def read_answer(stream: ReplyStream) -> ChatAnswer:
    answer = ChatAnswer(kinds=[], start=None, chunks=[], end=None, error=None)
    try:
        while not stream.finished:
            kind, data = await stream.next()
            answer.kinds.append(kind)
            if kind == "start":
                answer.start = orjson.loads(data)
            elif kind == "chunk":
                answer.chunks.append(data)
            else:
                answer.end = orjson.loads(data)
    except ByoError as exc:
        answer.kinds.append("error")
        answer.error = exc
    finally:
        stream.close()
    return answer


async def chat(bus: Bus, ref: ks.ConnectionRef, body: dict[str, Any], **options: Any) -> ChatAnswer:
    return await read_answer(await open_chat(bus, ref, body, **options))
