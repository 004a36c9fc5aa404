"""The bus: connecting, calling endpoints, streamed replies with cancellation, and discovery.

Plain request/reply endpoints are served by FastStream subscribers (`serve`) and called with
nats-py's request (`Bus.request`). The chat hot path uses nats-py directly on both ends: the
responder writes `Byo-Kind`/`Byo-Seq` messages to the caller's inbox (`StreamWriter`) and every
caller process shares one wildcard inbox subscription (`StreamMux`), so a streamed request costs
no SUB/UNSUB round trips.

Streaming protocol (ARCHITECTURE.md, "Streaming replies"):
  start -> chunk* -> done | error     each with Byo-Seq 0,1,2,...; keepalive may appear anywhere;
  result                              the single reply of a non-streamed chat request.
A gap in Byo-Seq or silence longer than the idle timeout is an error for the caller.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import nats
import nats.errors
import orjson
from faststream.nats import NatsBroker, NatsMessage, NatsResponse, NatsUserPassword
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from byorouter_common import errors
from byorouter_common.contracts import HDR_KIND, HDR_SEQ, Endpoint, Event
from byorouter_common.contracts.base import Rep, Req
from byorouter_common.errors import ByoError
from byorouter_common.nats_permissions import inbox_prefix
from byorouter_common.settings import ServiceSettings
from byorouter_common.telemetry import inject_headers

log = logging.getLogger(__name__)

START: Final = "start"
CHUNK: Final = "chunk"
DONE: Final = "done"
ERROR: Final = "error"
KEEPALIVE: Final = "keepalive"
RESULT: Final = "result"
_TERMINAL = frozenset((DONE, ERROR, RESULT))
_STATUS_HEADER = "Status"
_NO_RESPONDERS = "503"


def connect_options(settings: ServiceSettings, name: str) -> dict[str, Any]:
    """nats-py connect options every service uses: reconnect forever, name the connection."""
    options: dict[str, Any] = {
        "servers": [settings.nats_url],
        "name": f"byorouter-{name}",
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
        # A user may read only its own inboxes (nats_permissions), so replies go there.
        options["inbox_prefix"] = inbox_prefix(settings.nats_user)
    return options


async def _ignore_connect_error(_error: Exception) -> None:
    return None


async def connect(settings: ServiceSettings, name: str) -> NatsClient:
    """A bare nats-py connection, for processes that serve no FastStream handlers (the CLI)."""
    options = connect_options(settings, name)
    # nats-py retries the first connect forever unless a positive limit drops the server; the
    # caller reports the failure itself, so nats-py's own traceback logging is silenced.
    options["max_reconnect_attempts"] = 1
    options["allow_reconnect"] = False
    options["error_cb"] = _ignore_connect_error
    try:
        return await nats.connect(**options)
    except (OSError, nats.errors.NoServersError) as exc:
        raise errors.unavailable(f"Cannot reach NATS at {settings.nats_url}.") from exc


def make_broker(settings: ServiceSettings, name: str) -> NatsBroker:
    """The service's FastStream broker (one NATS connection for handlers, events and streams)."""
    options = connect_options(settings, name)
    servers = options.pop("servers")
    security = None
    if "user" in options:
        # FastStream takes a login only as a security object, not as nats-py's keywords.
        security = NatsUserPassword(options.pop("user"), options.pop("password") or "")
    return NatsBroker(
        servers,
        security=security,
        logger=logging.getLogger(f"byorouter.{name}.broker"),
        log_level=logging.DEBUG,
        **options,
    )


def _bus_error(exc: BaseException, what: str, timeout_s: float) -> ByoError:
    if isinstance(exc, nats.errors.NoRespondersError):
        return errors.unavailable(f"No {what} service is running.")
    if isinstance(exc, nats.errors.MaxPayloadError):
        return errors.too_large("Request is larger than the message bus accepts (1 MiB).")
    if isinstance(exc, asyncio.TimeoutError | nats.errors.TimeoutError):
        return errors.timeout(f"The {what} service did not answer within {timeout_s:g}s.")
    return errors.unavailable("The message bus is unavailable.")


class Bus:
    """Calls other services over NATS; one per process, wrapping its nats-py connection."""

    def __init__(self, nc: NatsClient, *, timeout_s: float = 5.0, idle_timeout_s: float = 30.0):
        self.nc = nc
        self.timeout_s = timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._mux: StreamMux | None = None

    async def request(
        self,
        endpoint: Endpoint[Req, Rep],
        payload: Req,
        *,
        timeout_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Rep:
        """Call `endpoint`; its error envelope, no responders or a timeout raise `ByoError`."""
        t = timeout_s or self.timeout_s
        data = payload.model_dump_json().encode()
        try:
            msg = await self.nc.request(
                endpoint.subject, data, timeout=t, headers=inject_headers(headers or {})
            )
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise _bus_error(exc, endpoint.service, t) from None
        if msg.headers and msg.headers.get(HDR_KIND) == ERROR:
            raise ByoError.from_json(msg.data)
        return endpoint.reply.model_validate_json(msg.data)

    async def publish_event(self, event: Event[Any], payload: BaseModel) -> None:
        await self.nc.publish(event.subject, payload.model_dump_json().encode())

    async def stream(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        idle_timeout_s: float | None = None,
        what: str = "router",
    ) -> ReplyStream:
        """Publish a request whose reply is a stream of Byo-Kind messages, and return its reader."""
        if self._mux is None:
            self._mux = StreamMux(self.nc)
            await self._mux.start()
        if len(data) > self.nc.max_payload:
            raise errors.too_large(
                f"Request is {len(data)} bytes; the message bus accepts at most "
                f"{self.nc.max_payload} bytes."
            )
        return await self._mux.open(
            subject, data, headers or {}, idle_timeout_s or self.idle_timeout_s, what
        )

    async def close(self) -> None:
        if self._mux is not None:
            await self._mux.stop()
            self._mux = None


class ReplyStream:
    """The caller's end of one streamed reply: `await next()` gives (kind, data) in order."""

    __slots__ = (
        "_expected",
        "_idle",
        "_inbox",
        "_mux",
        "_queue",
        "_what",
        "finished",
        "pass_keepalives",
    )

    def __init__(
        self, mux: StreamMux, inbox: str, queue: asyncio.Queue[Msg], idle: float, what: str
    ) -> None:
        self._mux = mux
        self._inbox = inbox
        self._queue = queue
        self._idle = idle
        self._expected = 0
        self._what = what
        self.finished = False
        # A caller relaying to a client that needs its own keep-alives (SSE) turns this on.
        self.pass_keepalives = False

    async def next(self) -> tuple[str, bytes]:
        """The next start/chunk/done/result (or keepalive, if passed) message.

        An error message raises its `ByoError`.
        """
        while True:
            try:
                msg = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    msg = await asyncio.wait_for(self._queue.get(), self._idle)
                except TimeoutError:
                    self.finished = True
                    raise errors.timeout(
                        f"The {self._what} sent nothing for {self._idle:g}s."
                    ) from None
            headers = msg.headers or {}
            if headers.get(_STATUS_HEADER) == _NO_RESPONDERS:
                self.finished = True
                raise errors.unavailable(f"No {self._what} service is running.")
            seq = headers.get(HDR_SEQ)
            if seq != str(self._expected):
                self.finished = True
                raise ByoError(
                    502, "stream_gap", f"Reply stream from the {self._what} lost a message."
                )
            self._expected += 1
            kind = headers.get(HDR_KIND, "")
            if kind == KEEPALIVE:
                if self.pass_keepalives:
                    return kind, b""
                continue
            if kind == ERROR:
                self.finished = True
                raise ByoError.from_json(msg.data)
            if kind in _TERMINAL:
                self.finished = True
            return kind, msg.data

    def close(self) -> None:
        self._mux.forget(self._inbox)


class StreamMux:
    """One wildcard inbox subscription per process, dispatching replies to per-request queues."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self._prefix = ""
        self._waiting: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Any = None
        self._counter = 0

    async def start(self) -> None:
        self._prefix = self.nc.new_inbox() + "."
        self._sub = await self.nc.subscribe(self._prefix + "*", cb=self._dispatch)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _dispatch(self, msg: Msg) -> None:
        queue = self._waiting.get(msg.subject)
        if queue is not None:
            queue.put_nowait(msg)

    async def open(
        self, subject: str, data: bytes, headers: dict[str, str], idle: float, what: str
    ) -> ReplyStream:
        self._counter += 1
        inbox = f"{self._prefix}{self._counter}"
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._waiting[inbox] = queue
        try:
            await self.nc.publish(subject, data, reply=inbox, headers=inject_headers(headers))
        except (nats.errors.Error, OSError) as exc:
            self._waiting.pop(inbox, None)
            raise _bus_error(exc, what, idle) from None
        return ReplyStream(self, inbox, queue, idle, what)

    def forget(self, inbox: str) -> None:
        self._waiting.pop(inbox, None)


class StreamWriter:
    """The responder's end of one streamed reply; numbers every message it sends."""

    __slots__ = ("_nc", "_reply", "_seq", "closed", "last_sent")

    def __init__(self, nc: NatsClient, reply: str) -> None:
        self._nc = nc
        self._reply = reply
        self._seq = 0
        self.closed = False
        self.last_sent = time.monotonic()

    async def send(self, kind: str, data: bytes = b"") -> None:
        if self.closed:
            return
        headers = {HDR_KIND: kind, HDR_SEQ: str(self._seq)}
        self._seq += 1
        self.last_sent = time.monotonic()
        if kind in _TERMINAL:
            self.closed = True
        try:
            await self._nc.publish(self._reply, data, headers=headers)
        except (nats.errors.Error, OSError):
            # The caller is gone or the bus is down; nothing left to tell anyone.
            self.closed = True

    async def start(self, start: BaseModel) -> None:
        await self.send(START, start.model_dump_json().encode())

    async def chunk(self, lines: bytes) -> None:
        await self.send(CHUNK, lines)

    async def done(self, done: BaseModel) -> None:
        await self.send(DONE, done.model_dump_json().encode())

    async def result(self, body: bytes) -> None:
        await self.send(RESULT, body)

    async def error(self, error: ByoError) -> None:
        await self.send(ERROR, error.to_json())

    async def keepalive(self) -> None:
        await self.send(KEEPALIVE)


class KeepAliveTicker:
    """One task per process that sends keep-alives on every stream that has been quiet."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._writers: set[StreamWriter] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, writer: StreamWriter) -> None:
        self._writers.add(writer)

    def discard(self, writer: StreamWriter) -> None:
        self._writers.discard(writer)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="keepalive-ticker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s / 2)
            now = time.monotonic()
            for writer in list(self._writers):
                if writer.closed:
                    self._writers.discard(writer)
                elif now - writer.last_sent >= self.interval_s:
                    await writer.keepalive()


# --- serving ----------------------------------------------------------------------------------


class Discovery:
    """Answers the NATS micro protocol ($SRV.PING/INFO/STATS) so `nats micro ls` lists us."""

    def __init__(self, name: str, version: str, description: str) -> None:
        self.name = name
        self.version = version
        self.description = description
        self.id = os.urandom(11).hex()
        self.started = datetime.now(UTC).isoformat()
        self._endpoints: dict[str, dict[str, Any]] = {}

    def add(self, name: str, subject: str, queue_group: str, description: str = "") -> None:
        self._endpoints[name] = {
            "name": name,
            "subject": subject,
            "queue_group": queue_group,
            "metadata": {"description": description} if description else None,
            "num_requests": 0,
            "num_errors": 0,
            "processing_time": 0,
            "average_processing_time": 0,
            "last_error": "",
        }

    def record(self, name: str, elapsed_ns: int, error: str | None = None) -> None:
        stats = self._endpoints.get(name)
        if stats is None:
            return
        stats["num_requests"] += 1
        stats["processing_time"] += elapsed_ns
        stats["average_processing_time"] = stats["processing_time"] // stats["num_requests"]
        if error is not None:
            stats["num_errors"] += 1
            stats["last_error"] = error

    def _identity(self, kind: str) -> dict[str, Any]:
        return {
            "type": f"io.nats.micro.v1.{kind}_response",
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "metadata": {},
        }

    def _reply(self, verb: str) -> bytes:
        body = self._identity(verb.lower())
        if verb == "INFO":
            body["description"] = self.description
            body["endpoints"] = [
                {k: e[k] for k in ("name", "subject", "queue_group", "metadata")}
                for e in self._endpoints.values()
            ]
        elif verb == "STATS":
            body["started"] = self.started
            body["endpoints"] = [
                {k: v for k, v in e.items() if k != "metadata"} for e in self._endpoints.values()
            ]
        return orjson.dumps(body)

    async def start(self, nc: NatsClient) -> None:
        for verb in ("PING", "INFO", "STATS"):

            async def answer(msg: Msg, verb: str = verb) -> None:
                if msg.reply:
                    await nc.publish(msg.reply, self._reply(verb))

            for subject in (
                f"$SRV.{verb}",
                f"$SRV.{verb}.{self.name}",
                f"$SRV.{verb}.{self.name}.{self.id}",
            ):
                await nc.subscribe(subject, cb=answer)


_DEPENDENCY_ERRORS: list[tuple[tuple[type[BaseException], ...], str]] = []


def map_dependency_errors(exceptions: tuple[type[BaseException], ...], message: str) -> None:
    """Declare that `exceptions` from this process's handlers mean a dependency it needs (its
    database, say) is down: callers then get a 503 with `message`, not an internal error."""
    _DEPENDENCY_ERRORS.append((exceptions, message))


def _dependency_error(exc: Exception) -> ByoError | None:
    for exceptions, message in _DEPENDENCY_ERRORS:
        if isinstance(exc, exceptions):
            return errors.unavailable(message)
    return None


def _validation_message(exc: ValidationError) -> str:
    # Never echo the rejected input: it may be a key.
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"Invalid request: {where}: {first.get('msg', 'invalid value')}."


def serve(
    broker: NatsBroker,
    endpoint: Endpoint[Req, Rep],
    handler: Callable[[Req], Awaitable[Rep]],
    *,
    discovery: Discovery,
    max_workers: int = 32,
) -> None:
    """Subscribe `handler` to `endpoint` in the service's queue group.

    The handler takes and returns contract models and raises `ByoError` for failures a caller
    should see; it never raises into the broker: every failure becomes the error envelope.
    """
    name = endpoint.name
    discovery.add(name, endpoint.subject, endpoint.service, endpoint.description)

    async def handle(msg: NatsMessage) -> NatsResponse:
        started = time.perf_counter_ns()
        failure: str | None = None
        try:
            request = endpoint.request.model_validate_json(msg.body)
            reply = await handler(request)
            response = NatsResponse(reply.model_dump_json().encode(), headers={HDR_KIND: RESULT})
        except ValidationError as exc:
            failure = "invalid request"
            response = _error_response(errors.bad_request(_validation_message(exc)))
        except ByoError as exc:
            failure = exc.code
            response = _error_response(exc)
        except Exception as exc:
            down = _dependency_error(exc)
            if down is not None:
                log.warning(
                    "dependency unavailable: %s",
                    down.message,
                    extra={"endpoint": endpoint.subject, "error": type(exc).__name__},
                )
                failure = down.code
                response = _error_response(down)
            else:
                log.exception("handler failed", extra={"endpoint": endpoint.subject})
                failure = "internal error"
                response = _error_response(errors.internal())
        discovery.record(name, time.perf_counter_ns() - started, failure)
        return response

    handle.__name__ = f"handle_{name}"
    broker.subscriber(endpoint.subject, queue=endpoint.service, max_workers=max_workers)(handle)


def _error_response(error: ByoError) -> NatsResponse:
    return NatsResponse(error.to_json(), headers={HDR_KIND: ERROR})


def subscribe_event(
    broker: NatsBroker, event: Event[Any], handler: Callable[[Any], Awaitable[None]]
) -> None:
    """Every copy receives every event (no queue group): caches must all drop stale entries."""

    async def handle(msg: NatsMessage) -> None:
        try:
            await handler(event.payload.model_validate_json(msg.body))
        except Exception:
            log.exception("event handler failed", extra={"event": event.subject})

    handle.__name__ = "on_" + event.subject.replace(".", "_")
    broker.subscriber(event.subject)(handle)


def header(headers: Mapping[str, str] | None, name: str, default: str = "") -> str:
    return (headers or {}).get(name, default)


def consume_event(
    broker: NatsBroker,
    event: Event[Any],
    handler: Callable[[Any], Awaitable[None]],
    *,
    queue: str,
) -> None:
    """Exactly one copy of the `queue` group receives each event: for records, not caches.

    A report such as a request's usage must be stored once however many copies run.
    """

    async def handle(msg: NatsMessage) -> None:
        try:
            await handler(event.payload.model_validate_json(msg.body))
        except Exception:
            log.exception("event handler failed", extra={"event": event.subject})

    handle.__name__ = "consume_" + event.subject.replace(".", "_")
    broker.subscriber(event.subject, queue=queue)(handle)
