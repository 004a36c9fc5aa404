"""One chat that falls back is one trace, exported over OTLP/HTTP as an operator would see it.

A stack of its own (its own NATS, so no other suite's router answers its requests) exports to
a small OTLP/HTTP receiver in this test: an aiohttp server decoding `ExportTraceServiceRequest`
protobuf, the wire format Jaeger, Tempo and the OpenTelemetry Collector accept. Its connection
asks openai first, which answers 429, and falls back to selfhosted, which serves. The demo
connection's self-hosted server sits behind a tunnel client, so its request crosses the tunnel
service too.
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from tests.conftest import create_database
from tests.e2e.conftest import sdk_client
from tests.e2e.test_fallback import FALLBACK_MODEL, create_fallback_connection

pytestmark = pytest.mark.timeout(180)

PROMPT = "a prompt no trace may hold " + secrets.token_hex(8)


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    start_ns: int


class OtlpReceiver:
    """An OTLP/HTTP trace endpoint (POST /v1/traces) that keeps every body it was sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.spans: list[ExportedSpan] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.bodies.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            service = _attributes(resource_spans.resource.attributes)["service.name"]
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(_span(service, span) for span in scope_spans.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


def _span(service: str, span: ProtoSpan) -> ExportedSpan:
    return ExportedSpan(
        service=service,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(),
        name=span.name,
        kind=span.kind,
        attributes=_attributes(span.attributes),
        status_code=span.status.code,
        start_ns=span.start_time_unix_nano,
    )


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[OtlpReceiver]:
    running = OtlpReceiver()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def traced_stack(
    receiver: OtlpReceiver, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("traced-stack") / ".byorouter",
        database_url=create_database(database_url, "traces"),
        services=("keystore", "router", "gateway", "tunnel"),
        # Configured as an operator would, with the standard variables only.
        env_overrides={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "BYOROUTER_LOG_FORMAT": "text",
        },
    )
    # Started off the loop: the receiver has to answer the services' exports meanwhile.
    await asyncio.to_thread(stack.start)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


@pytest.fixture(scope="module")
async def traced_bus(traced_stack: Stack) -> AsyncIterator[Bus]:
    nc = await connect(traced_stack.nats_settings(), "traces-tests")
    yield Bus(nc)
    await nc.close()


async def wait_for_spans(
    receiver: OtlpReceiver, trace_id: str, done: Any, timeout_s: float = 20.0
) -> list[ExportedSpan]:
    """The spans of `trace_id` once `done(spans)` holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        found = trace_of(receiver.spans, trace_id)
        if done(found):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"trace {trace_id} incomplete after {timeout_s}s: {found}")


async def wait_for_trace_root(
    receiver: OtlpReceiver, request_id: str, timeout_s: float = 20.0
) -> ExportedSpan:
    """The gateway's span of the request the client saw as `request_id`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        for span in receiver.spans:
            if (
                span.service == "byorouter-gateway"
                and span.attributes.get("byorouter.request_id") == request_id
            ):
                return span
        await asyncio.sleep(0.1)
    raise AssertionError(f"no gateway span for {request_id} after {timeout_s}s")


def trace_of(spans: list[ExportedSpan], trace_id: str) -> list[ExportedSpan]:
    return sorted((s for s in spans if s.trace_id == trace_id), key=lambda s: s.start_ns)


async def wait_for_trace(
    receiver: OtlpReceiver, request_id: str, attempts: int, timeout_s: float = 20.0
) -> list[ExportedSpan]:
    """The spans of the trace the gateway's span for `request_id` roots, once all arrived."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    found: list[ExportedSpan] = []
    while asyncio.get_running_loop().time() < deadline:
        roots = [
            s
            for s in receiver.spans
            if s.service == "byorouter-gateway"
            and s.attributes.get("byorouter.request_id") == request_id
        ]
        if roots:
            found = trace_of(receiver.spans, roots[0].trace_id)
            names = [s.name for s in found]
            if (
                sum(name.startswith("attempt ") for name in names) == attempts
                and any(s.service == "byorouter-keystore" for s in found)
                and any(s.attributes.get("byorouter.attempts") for s in found)
            ):
                return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"trace of {request_id} incomplete after {timeout_s}s: {found}")


async def test_a_fallback_is_one_trace_with_one_span_per_attempt(
    traced_stack: Stack, traced_bus: Bus, receiver: OtlpReceiver
) -> None:
    tenant = await create_fallback_connection(traced_bus, traced_stack.upstream_base_url)
    client = sdk_client(traced_stack, tenant)
    raw = await client.chat.completions.with_raw_response.create(
        model="openai/busy-429", messages=[{"role": "user", "content": PROMPT}]
    )
    assert raw.headers["x-byorouter-provider"] == "selfhosted"
    attempts = int(raw.headers["x-byorouter-attempts"])
    assert PROMPT in (raw.parse().choices[0].message.content or "")

    spans = await wait_for_trace(receiver, raw.headers["x-request-id"], attempts)

    # One tree: the gateway's server span is the root and every other span hangs under it.
    (root,) = [s for s in spans if not s.parent_id]
    assert root.service == "byorouter-gateway"
    assert root.name == "POST /v1/chat/completions"
    assert root.attributes["http.response.status_code"] == 200
    ids = {s.span_id for s in spans}
    assert all(s.parent_id in ids for s in spans if s is not root)
    assert {"byorouter-gateway", "byorouter-router", "byorouter-keystore"} <= {
        s.service for s in spans
    }

    (chat,) = [s for s in spans if s.service == "byorouter-router" and s.name.startswith("chat ")]
    assert chat.name == "chat busy-429"
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "busy-429"
    assert chat.attributes["gen_ai.response.model"] == FALLBACK_MODEL
    assert chat.attributes["gen_ai.provider.name"] == "selfhosted"
    assert chat.attributes["gen_ai.request.stream"] is False
    assert chat.attributes["gen_ai.usage.input_tokens"] == raw.parse().usage.prompt_tokens  # type: ignore[union-attr]
    assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    assert chat.attributes["byorouter.fallback"] is True
    assert chat.attributes["byorouter.attempts"] == attempts
    assert chat.attributes["byorouter.app_id"] == tenant.app_id
    assert chat.attributes["byorouter.connection_id"] == tenant.connection_id

    # Children of the chat span, in order: openai refused (429), selfhosted answered.
    tried = [s for s in spans if s.parent_id == chat.span_id and s.name.startswith("attempt ")]
    assert len(tried) == attempts >= 2
    *refused, answered = tried
    for attempt in refused:
        assert attempt.name == "attempt openai"
        assert attempt.attributes["http.response.status_code"] == 429
        assert attempt.attributes["byorouter.outcome"] == "error"
        assert attempt.status_code == ProtoStatus.STATUS_CODE_ERROR
    assert answered.name == "attempt selfhosted"
    assert answered.attributes["byorouter.outcome"] == "ok"
    assert answered.attributes["gen_ai.request.model"] == FALLBACK_MODEL
    assert "byorouter.waited_s" in answered.attributes

    # Nothing secret or private went over the wire: keys, the prompt, the answer (it echoes it).
    exported = b"".join(receiver.bodies)
    for secret in (tenant.app_api_key, tenant.provider_key, PROMPT):
        assert secret.encode() not in exported


async def test_a_tunnelled_request_is_relayed_under_its_attempt_with_sizes_only(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    demo = await asyncio.to_thread(traced_stack.create_demo)
    model = await asyncio.to_thread(traced_stack.start_demo_tunnel, demo)
    client = openai.AsyncOpenAI(
        base_url=traced_stack.gateway_url + "/v1",
        api_key=demo["app_api_key"],
        default_headers={"X-Byorouter-Connection": demo["connection_id"]},
        max_retries=0,
    )
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": PROMPT}]
    )
    assert PROMPT in (raw.parse().choices[0].message.content or "")
    request_id = raw.headers["x-request-id"]
    root = await wait_for_trace_root(receiver, request_id)
    spans = await wait_for_spans(
        receiver,
        root.trace_id,
        lambda found: (
            any(s.name == "tunnel relay" for s in found)
            and any(s.attributes.get("byorouter.attempts") for s in found)
        ),
    )

    (relay,) = [s for s in spans if s.name == "tunnel relay"]
    (attempt,) = [s for s in spans if s.name.startswith("attempt ")]
    assert relay.service == "byorouter-tunnel"
    assert relay.parent_id == attempt.span_id
    assert attempt.attributes["byorouter.outcome"] == "ok"
    assert relay.attributes["byorouter.outcome"] == "ok"
    assert relay.attributes["byorouter.tunnel_id"].startswith("tun_")
    # Sealed both ways: the sizes are all the relay can know.
    assert relay.attributes["byorouter.tunnel.request_bytes"] > len(PROMPT)
    assert relay.attributes["byorouter.tunnel.response_bytes"] > len(PROMPT)

    exported = b"".join(receiver.bodies)
    for secret in (demo["app_api_key"].encode(), PROMPT.encode(), b"byo_tun_"):
        assert secret not in exported
