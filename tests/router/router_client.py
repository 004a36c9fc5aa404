"""The caller's side of the router protocol for tests, and connections made through keystore."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr

from byorouter_common.bus import Bus, ReplyStream
from byorouter_common.contracts import HDR_REQUEST_ID
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.router import CHAT, encode_chat_request
from byorouter_common.errors import ByoError
from tests.conftest import keystore_stats

# The router under test: timeouts short enough that timeout tests finish quickly, long enough
# for a loaded CI machine.
READ_TIMEOUT_S = 2.0
KEEPALIVE_S = 0.2


def provider(
    name: ks.ProviderName, base_url: str | None, key: str | None = None
) -> ks.ProviderCredentialInput:
    return ks.ProviderCredentialInput(
        provider=name, api_key=SecretStr(key) if key is not None else None, base_url=base_url
    )


async def new_app(bus: Bus) -> str:
    """A new app registered with keystore; returns its id."""
    app = await bus.request(ks.APP_CREATE, ks.AppCreate(name="router test app"))
    return app.app_id


async def connect(
    bus: Bus, *providers: ks.ProviderCredentialInput, app_id: str | None = None
) -> ks.ConnectionRef:
    """A connection stored in keystore (of a new app unless given), providers in priority order."""
    created = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(app_id=app_id or await new_app(bus), providers=list(providers)),
    )
    return ks.ConnectionRef(app_id=created.app_id, connection_id=created.connection_id)


async def credential_lookups(nc: NatsClient) -> int:
    """How many credential lookups keystore has answered so far (its NATS micro stats)."""
    stats = await keystore_stats(nc, listen_s=0.2)
    assert stats, "keystore did not answer $SRV.STATS"
    return sum(endpoints["credentials_resolve"] for endpoints in stats.values())


class Collected:
    """A `ChatReply` that keeps what it is given."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    async def start(self) -> None:
        self.kinds.append("start")

    async def chunk(self, lines: bytes) -> None:
        self.kinds.append("chunk")

    async def done(self, finish_reason: str | None, usage: dict[str, Any] | None) -> None:
        self.kinds.append("done")

    async def result(self, body: bytes) -> None:
        self.kinds.append("result")


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
