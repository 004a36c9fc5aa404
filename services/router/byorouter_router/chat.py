"""The chat hot path: one bus request in, the chosen provider's answer streamed back out.

Requests arrive on nats-py directly (`byorouter.router.chat`, queue group `router`). nats-py runs
a subscription's callback for one message at a time, so the callback only starts a task per
request and returns; a cancel message (`byorouter.router.cancel.<request_id>`) cancels that task,
which aborts the upstream HTTP call. Each reply goes to the caller's inbox as the streaming
protocol of `byorouter_common.bus`: start, then chunk* and done (streamed) or result, or error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, Final

import nats.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from byorouter_common import errors
from byorouter_common.bus import (
    CHUNK,
    DONE,
    RESULT,
    START,
    Discovery,
    KeepAliveTicker,
    StreamWriter,
)
from byorouter_common.contracts import HDR_REQUEST_ID
from byorouter_common.contracts.keystore import PROVIDERS
from byorouter_common.contracts.router import CANCEL_PREFIX, CHAT
from byorouter_common.errors import ByoError
from byorouter_common.telemetry import extract_context
from byorouter_router.credentials import ConnectionCredentials, CredentialCache
from byorouter_router.providers.base import Provider

log = logging.getLogger(__name__)
tracer = trace.get_tracer("byorouter.router")

ENDPOINT_NAME: Final = CHAT.name
# Every provider prefix a model id may carry; `default` is the app's own fallback provider.
KNOWN_PREFIXES: Final = frozenset((*PROVIDERS, "default"))


class BusReply:
    """A provider's answer, written to the caller's inbox as Byo-Kind messages."""

    __slots__ = ("_start", "_writer")

    def __init__(self, writer: StreamWriter, provider: str, model: str) -> None:
        self._writer = writer
        self._start = orjson.dumps({"provider": provider, "model": model, "attempts": 1})

    async def start(self) -> None:
        await self._writer.send(START, self._start)

    async def chunk(self, lines: bytes) -> None:
        await self._writer.send(CHUNK, lines)

    async def done(self, finish_reason: str | None, usage: dict[str, Any] | None) -> None:
        # orjson rather than StreamDone.model_dump_json: same JSON, a fraction of the cost.
        await self._writer.send(
            DONE, orjson.dumps({"finish_reason": finish_reason, "usage": usage})
        )

    async def result(self, body: bytes) -> None:
        await self._writer.send(RESULT, body)


def _has(connection: ConnectionCredentials) -> str:
    names = connection.provider_names
    return (
        f"This connection has: {', '.join(names)}."
        if names
        else ("This connection has no providers.")
    )


def choose_provider(model_id: Any, connection: ConnectionCredentials) -> tuple[str, str]:
    """(provider, upstream model) for a provider-prefixed model id such as `openai/gpt-4o`.

    Messages never quote the model id: it is input the app sent and may be anything.
    """
    if not isinstance(model_id, str) or not model_id:
        raise errors.bad_request("The request has no model.", param="model")
    prefix, _, model = model_id.partition("/")
    if not model or prefix not in KNOWN_PREFIXES:
        raise ByoError(
            404,
            "model_not_found",
            "Model ids start with a provider, e.g. openai/gpt-4o or selfhosted/llama3. "
            + _has(connection),
            param="model",
        )
    if prefix == "default":
        if connection.fallback_to_default:
            raise ByoError(
                404,
                "provider_not_supported",
                "The app's default provider is not supported yet.",
                param="model",
            )
        raise ByoError(
            404,
            "model_not_found",
            "This connection does not use the app's default provider. " + _has(connection),
            param="model",
        )
    if prefix not in connection.providers:
        raise ByoError(
            404,
            "model_not_found",
            f"This connection has no {prefix} provider. " + _has(connection),
            param="model",
        )
    return prefix, model


class ChatRouter:
    """Serves chat requests: one task per request, cancellable by request id."""

    def __init__(
        self,
        nc: NatsClient,
        credentials: CredentialCache,
        providers: dict[str, Provider],
        *,
        discovery: Discovery,
        keepalive: KeepAliveTicker,
        deadline_s: float,
    ) -> None:
        self._nc = nc
        self._credentials = credentials
        self._providers = providers
        self._discovery = discovery
        self._keepalive = keepalive
        self._deadline_s = deadline_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._requests: Subscription | None = None
        self._cancels: Subscription | None = None
        self._stopping = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        self._discovery.add(ENDPOINT_NAME, CHAT.subject, CHAT.service, CHAT.description)
        self._requests = await self._nc.subscribe(
            CHAT.subject, queue=CHAT.service, cb=self.on_request
        )
        # No queue group: only the copy holding the request acts on its cancel.
        self._cancels = await self._nc.subscribe(f"{CANCEL_PREFIX}.*", cb=self.on_cancel)

    async def stop(self, grace_s: float) -> None:
        """Take no new requests, let in-flight ones finish for `grace_s`, cancel the rest."""
        if self._requests is not None:
            # Drain, not unsubscribe: requests already delivered to us are still answered.
            with contextlib.suppress(nats.errors.Error):
                await self._requests.drain()  # type: ignore[no-untyped-call]
            self._requests = None
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            self._stopping = True
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._cancels is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._cancels.unsubscribe()
            self._cancels = None

    async def on_request(self, msg: Msg) -> None:
        if not msg.reply:
            # Published without an inbox: there is nowhere to answer, so nothing to do.
            self._discovery.record(ENDPOINT_NAME, 0, "no reply subject")
            return
        request_id, handling = self._accept(msg)
        task = asyncio.create_task(handling)
        self._tasks[request_id] = task
        task.add_done_callback(lambda t: self._forget(request_id, t))

    def _forget(self, request_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(request_id) is task:
            del self._tasks[request_id]

    async def on_cancel(self, msg: Msg) -> None:
        task = self._tasks.get(msg.subject[len(CANCEL_PREFIX) + 1 :])
        if task is not None:
            task.cancel()

    def _accept(self, msg: Msg) -> tuple[str, Coroutine[Any, Any, None]]:
        """The request id and the coroutine that answers `msg`, parsing its JSON once."""
        headers = msg.headers or {}
        try:
            request = orjson.loads(msg.data)
            request_id = request["request_id"]
            app_id = request["app_id"]
            connection_id = request["connection_id"]
            body = request["body"]
            if not (
                type(request_id) is str
                and type(app_id) is str
                and type(connection_id) is str
                and type(body) is dict
            ):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            request_id = headers.get(HDR_REQUEST_ID) or msg.reply
            return request_id, self._refuse(
                msg,
                errors.bad_request(
                    "Invalid chat request: expected request_id, app_id, connection_id and body."
                ),
            )
        return request_id, self._answer(msg, request_id, app_id, connection_id, body)

    async def _refuse(self, msg: Msg, error: ByoError) -> None:
        if msg.reply:
            await StreamWriter(self._nc, msg.reply).error(error)
        self._discovery.record(ENDPOINT_NAME, 0, error.code)

    async def _answer(
        self, msg: Msg, request_id: str, app_id: str, connection_id: str, body: dict[str, Any]
    ) -> None:
        began = time.perf_counter_ns()
        deadline = asyncio.get_running_loop().time() + self._deadline_s
        writer = StreamWriter(self._nc, msg.reply)
        self._keepalive.add(writer)
        failure: str | None = None
        with tracer.start_as_current_span(
            "router.chat",
            context=extract_context(msg.headers) if msg.headers else None,
            kind=SpanKind.SERVER,
            attributes={"byorouter.request_id": request_id},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                connection = await self._credentials.resolve(app_id, connection_id)
                provider_name, model = choose_provider(body.get("model"), connection)
                span.set_attribute("byorouter.provider", provider_name)
                span.set_attribute("byorouter.model", model)
                provider = self._providers.get(provider_name)
                if provider is None:
                    raise ByoError(
                        404,
                        "provider_not_supported",
                        f"The {provider_name} provider is not supported yet.",
                        param="model",
                    )
                await provider.chat(
                    connection.providers[provider_name],
                    model,
                    body,
                    BusReply(writer, provider_name, model),
                    deadline,
                )
            except ByoError as exc:
                failure = exc.code
                span.set_status(Status(StatusCode.ERROR, exc.code))
                span.set_attribute("byorouter.error_code", exc.code)
                await writer.error(exc)
            except asyncio.CancelledError:
                failure = "cancelled"
                if self._stopping:
                    # Tell the caller now rather than letting it wait out its idle timeout.
                    await writer.error(errors.unavailable("The router is shutting down."))
                # Otherwise the caller cancelled it: nobody is left to tell.
                raise
            except Exception:
                log.exception("chat request failed", extra={"request_id": request_id})
                failure = "internal_error"
                span.set_status(Status(StatusCode.ERROR, failure))
                await writer.error(errors.internal())
            finally:
                writer.closed = True
                self._keepalive.discard(writer)
                self._discovery.record(ENDPOINT_NAME, time.perf_counter_ns() - began, failure)
