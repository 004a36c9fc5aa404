"""A real gateway (uvicorn on a free port, in this process) on its own real NATS server.

STAND-INS, FOR NOW: keystore and router are being built in parallel, so `FakeKeystore` and
`FakeRouter` below answer APP_AUTHENTICATE, CONNECTION_GET/DELETE, MODELS and the streamed CHAT on
the real bus, speaking the exact contract of `byorouter_common.contracts` with the same serving
code the services use (`bus.serve`, `StreamWriter`, discovery). That is acceptable here ONLY
because those services do not exist yet: once they land, swap these for the real keystore and
router processes (full-stack tests with the openai SDK live in tests/e2e/).

The gateway gets a private NATS server, like keystore's tests: stand-ins in the `keystore` and
`router` queue groups on a shared bus would steal requests from a real stack, and "no router is
running" must really mean none.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import string
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import nats
import orjson
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from byorouter_cli.backends import NatsServer, free_port
from byorouter_common import errors
from byorouter_common.bus import StreamWriter, serve
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import router as rt
from byorouter_common.errors import ByoError
from byorouter_common.service import ServiceRuntime
from byorouter_common.settings import ServiceSettings
from byorouter_gateway.__main__ import main as gateway_main
from byorouter_gateway.settings import GatewaySettings

_ALNUM = string.ascii_letters + string.digits


def new_app_key() -> tuple[str, str]:
    """(key_id, key) in keystore's format: byo_sk_<12 [a-z0-9]>_<43 [A-Za-z0-9]>."""
    key_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(12))
    return key_id, f"byo_sk_{key_id}_" + "".join(secrets.choice(_ALNUM) for _ in range(43))


def new_connection_id() -> str:
    return "conn_" + secrets.token_hex(12)


@dataclass
class Tenant:
    """An app with a key and one connection, as keystore would have issued them."""

    app_id: str
    key_id: str
    app_key: str
    connection_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.app_key}",
            "X-Byorouter-Connection": self.connection_id,
        }


class FakeKeystore:
    """Stand-in for keystore's app-key and connection endpoints (see the module docstring)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, ks.AppPrincipal]] = {}  # key hash -> (key_id, principal)
        self.connections: dict[str, ks.ConnectionInfo] = {}
        self.authenticate_calls = 0
        self.runtime: ServiceRuntime | None = None
        self.nats_url = ""

    async def start(self, nats_url: str) -> None:
        self.nats_url = nats_url
        runtime = ServiceRuntime("keystore", ServiceSettings(NATS_URL=nats_url), "stand-in")
        discovery = runtime.discovery
        serve(runtime.broker, ks.APP_AUTHENTICATE, self.authenticate, discovery=discovery)
        serve(runtime.broker, ks.CONNECTION_GET, self.get_connection, discovery=discovery)
        serve(runtime.broker, ks.CONNECTION_DELETE, self.delete_connection, discovery=discovery)
        await runtime.start()
        self.runtime = runtime

    async def stop(self) -> None:
        if self.runtime is not None:
            await self.runtime.close()
            self.runtime = None

    def new_tenant(self) -> Tenant:
        app_id = "app_" + secrets.token_hex(10)
        key_id, key = new_app_key()
        principal = ks.AppPrincipal(
            app_id=app_id, client_id="cli_" + app_id[4:], name="test app", key_id=key_id
        )
        self.keys[hashlib.sha256(key.encode()).hexdigest()] = (key_id, principal)
        connection_id = new_connection_id()
        now = datetime.now(UTC)
        self.connections[connection_id] = ks.ConnectionInfo(
            connection_id=connection_id,
            app_id=app_id,
            status="active",
            fallback_to_default=True,
            created_at=now,
            providers=[
                ks.ProviderInfo(
                    provider="openai",
                    label="sk-...AbCd",
                    base_url=None,
                    preferred_model="gpt-4o-mini",
                    priority=0,
                    updated_at=now,
                ),
                ks.ProviderInfo(
                    provider="anthropic",
                    label="sk-ant-...WxYz",
                    base_url=None,
                    preferred_model=None,
                    priority=1,
                    status="failing",
                    last_error="401 from provider",
                    updated_at=now,
                ),
            ],
        )
        return Tenant(app_id, key_id, key, connection_id)

    async def revoke(self, key_id: str) -> None:
        """Revoke like keystore does: forget the key, then tell every gateway copy."""
        for key_hash, (kid, principal) in list(self.keys.items()):
            if kid == key_id:
                del self.keys[key_hash]
                assert self.runtime is not None
                await self.runtime.bus.publish_event(
                    events.APP_KEY_REVOKED,
                    events.AppKeyRevokedEvent(key_id=key_id, app_id=principal.app_id),
                )

    async def authenticate(self, request: ks.AppAuthenticate) -> ks.AppPrincipal:
        self.authenticate_calls += 1
        found = self.keys.get(request.key_hash)
        if found is None or found[0] != request.key_id:
            raise errors.unauthorized("Unknown or revoked app key.")
        return found[1]

    def _owned(self, ref: ks.ConnectionRef) -> ks.ConnectionInfo:
        info = self.connections.get(ref.connection_id)
        if info is None or info.app_id != ref.app_id:
            raise errors.not_found("No such connection.", code="connection_not_found")
        return info

    async def get_connection(self, ref: ks.ConnectionRef) -> ks.ConnectionInfo:
        return self._owned(ref)

    async def delete_connection(self, ref: ks.ConnectionRef) -> ks.ConnectionDeleted:
        self._owned(ref)
        del self.connections[ref.connection_id]
        return ks.ConnectionDeleted(connection_id=ref.connection_id)


def completion_chunk(
    content: str | None = None, *, finish: str | None = None, usage: dict[str, int] | None = None
) -> bytes:
    choices: list[dict[str, Any]] = []
    if content is not None or finish is not None:
        delta = {"content": content} if content is not None else {}
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
    chunk: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": choices,
    }
    if usage is not None:
        chunk["usage"] = usage
    return orjson.dumps(chunk)


USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


@dataclass
class ChatSeen:
    request: rt.ChatRequest
    byo_request_id: str
    traceparent: str | None


@dataclass
class FakeRouter:
    """Stand-in for the router's CHAT and MODELS endpoints (see the module docstring).

    The model name picks the behaviour, like the fake upstreams do:
      test/echo (or any other)  start, then the reply (stream: chunks, one message with 2 lines)
      test/error-after-start    start, one chunk, then an error
      test/rate-limited         a 429 with retry_after=1 before start
      test/not-connected        a 404 model_not_found before start
      test/drip                 start, then a chunk every 50 ms until cancelled (or 200 chunks)
      test/slow-result          start, then the result only after 5 s unless cancelled
    """

    chats: dict[str, ChatSeen] = field(default_factory=dict)  # by body `user` tag
    cancelled: dict[str, asyncio.Event] = field(default_factory=dict)  # by request id
    runtime: ServiceRuntime | None = None
    nats_url: str = ""
    _subs: list[Any] = field(default_factory=list)

    async def start(self, nats_url: str) -> None:
        self.nats_url = nats_url
        runtime = ServiceRuntime("router", ServiceSettings(NATS_URL=nats_url), "stand-in")
        serve(runtime.broker, rt.MODELS, self.models, discovery=runtime.discovery)
        await runtime.start()
        nc = runtime.bus.nc
        self._subs = [
            await nc.subscribe(rt.CHAT.subject, queue="router", cb=self._on_chat),
            await nc.subscribe(rt.CANCEL_PREFIX + ".*", cb=self._on_cancel),
        ]
        self.runtime = runtime

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        if self.runtime is not None:
            await self.runtime.close()
            self.runtime = None

    @contextlib.asynccontextmanager
    async def stopped(self) -> AsyncIterator[None]:
        await self.stop()
        try:
            yield
        finally:
            await self.start(self.nats_url)

    async def models(self, ref: ks.ConnectionRef) -> rt.ModelList:
        return rt.ModelList(data=[rt.ModelCard(id="openai/gpt-4o-mini", owned_by="openai")])

    async def _on_cancel(self, msg: Msg) -> None:
        request_id = msg.subject.removeprefix(rt.CANCEL_PREFIX + ".")
        self.cancelled.setdefault(request_id, asyncio.Event()).set()

    async def _on_chat(self, msg: Msg) -> None:
        assert self.runtime is not None
        # The contract model refuses unknown fields: this checks the gateway speaks it exactly.
        request = rt.ChatRequest.model_validate_json(msg.data)
        headers = msg.headers or {}
        tag = str(request.body.get("user", ""))
        self.chats[tag] = ChatSeen(
            request, headers.get("Byo-Request-Id", ""), headers.get("traceparent")
        )
        writer = StreamWriter(self.runtime.bus.nc, msg.reply)
        asyncio.get_running_loop().create_task(self._answer(request, writer))

    async def _answer(self, request: rt.ChatRequest, writer: StreamWriter) -> None:
        body = request.body
        model = str(body["model"])
        stream = bool(body.get("stream"))
        cancelled = self.cancelled.setdefault(request.request_id, asyncio.Event())
        if model == "test/rate-limited":
            await writer.error(errors.rate_limited("Provider rate limit.", retry_after=1.0))
            return
        if model == "test/not-connected":
            await writer.error(errors.not_found("Model not connected.", code="model_not_found"))
            return
        await writer.start(rt.StreamStart(provider="openai", model="gpt-4o-mini", attempts=2))
        if model == "test/error-after-start":
            await writer.chunk(completion_chunk("partial"))
            await writer.error(ByoError(502, "upstream_error", "Provider failed mid-answer."))
            return
        if model == "test/drip":
            for n in range(200):
                await writer.chunk(completion_chunk(f"w{n} "))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cancelled.wait(), 0.05)
                if cancelled.is_set():
                    return
            await writer.done(rt.StreamDone(finish_reason="stop"))
            return
        if model == "test/slow-result":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancelled.wait(), 5)
            if cancelled.is_set():
                return
        text = str(body["messages"][-1].get("content", ""))
        if not stream:
            await writer.result(
                orjson.dumps(
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": 1700000000,
                        "model": "gpt-4o-mini",
                        "system_fingerprint": "fp_passthrough",
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": f"echo: {text}"},
                            }
                        ],
                        "usage": USAGE,
                    }
                )
            )
            return
        await writer.chunk(completion_chunk("echo: "))
        # A burst the upstream delivered at once travels as one message of two lines.
        lines = [completion_chunk(text), completion_chunk(finish="stop")]
        if (body.get("stream_options") or {}).get("include_usage"):
            lines.append(completion_chunk(usage=USAGE))
        await writer.chunk(b"\n".join(lines))
        await writer.done(rt.StreamDone(finish_reason="stop", usage=USAGE))


@dataclass
class RunningGateway:
    url: str
    runtime: ServiceRuntime
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.runtime.stopped.set()
        await asyncio.wait_for(self.task, 15)
        await self.runtime.close()


async def start_gateway(nats_url: str, **settings: Any) -> RunningGateway:
    port = free_port()
    runtime = ServiceRuntime(
        "gateway", GatewaySettings(nats_url=nats_url, port=port, **settings), "under test"
    )
    task = asyncio.get_running_loop().create_task(gateway_main(runtime))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    async with httpx.AsyncClient(base_url=url) as client:
        while True:
            assert not task.done(), task.exception()
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    return RunningGateway(url, runtime, task)
            assert time.monotonic() < deadline, "gateway did not start within 10 s"
            await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def gateway_nats_url() -> Iterator[str]:
    server = NatsServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def keystore(gateway_nats_url: str) -> AsyncIterator[FakeKeystore]:
    fake = FakeKeystore()
    await fake.start(gateway_nats_url)
    yield fake
    await fake.stop()


@pytest.fixture(scope="session")
async def router(gateway_nats_url: str) -> AsyncIterator[FakeRouter]:
    fake = FakeRouter()
    await fake.start(gateway_nats_url)
    yield fake
    await fake.stop()


@pytest.fixture(scope="session")
async def gateway(
    gateway_nats_url: str, keystore: FakeKeystore, router: FakeRouter
) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(gateway_nats_url)
    yield running
    await running.stop()


@pytest.fixture
async def tenant(keystore: FakeKeystore) -> Tenant:
    return keystore.new_tenant()


@pytest.fixture
async def http(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
async def observer(gateway_nats_url: str) -> AsyncIterator[NatsClient]:
    """A plain NATS client for tests that watch the bus."""
    nc = await nats.connect(gateway_nats_url)
    yield nc
    await nc.close()


def tag() -> str:
    return "t-" + secrets.token_hex(6)


def chat_body(model: str = "test/echo", content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}
