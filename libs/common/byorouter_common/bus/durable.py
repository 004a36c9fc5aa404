"""Durable events on JetStream: reports that must reach their recorder even if it is down.

`ensure_stream` creates a contract's `DurableStream` if it is missing (both ends call it at
start). `DurablePublisher` publishes without making the caller wait for the ack, and retries
until the stream has it. `DurableRecorder` pulls from the contract's shared durable consumer,
hands its handler a batch at a time, and acks the batch's messages only once the handler has
returned (the records are committed).

Just over 500 lines since the recorder learned to batch (decision 0025): the publisher and the
recorder share the stream's contract and its set-up here; the recorder is the next to move out,
into its own module beside this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.api import ConsumerConfig as JsConsumerConfig
from pydantic import ValidationError

from byorouter_common.contracts.base import DurableConsumer, DurableStream, Event

log = logging.getLogger("byorouter_common.bus")

MSG_ID: Final = "Nats-Msg-Id"
# Failures of the bus or of JetStream (nats-py's JetStream errors derive from nats.errors.Error).
BUS_ERRORS: Final = (nats.errors.Error, OSError, asyncio.TimeoutError)


def stream_config(stream: DurableStream, replicas: int = 1) -> StreamConfig:
    """`stream`'s JetStream config; `replicas` copies of it on a cluster (its consumers inherit
    them), so losing a node loses no message."""
    return StreamConfig(
        name=stream.name,
        subjects=list(stream.subjects),
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=stream.max_age_s,
        max_bytes=stream.max_bytes,
        discard=DiscardPolicy.NEW,
        duplicate_window=stream.duplicate_window_s,
        num_replicas=replicas,
    )


def _differs(have: StreamConfig, want: StreamConfig) -> bool:
    return (
        sorted(have.subjects or ()) != sorted(want.subjects or ())
        or have.max_age != want.max_age
        or have.max_bytes != want.max_bytes
        or have.duplicate_window != want.duplicate_window
        or (have.num_replicas or 1) != (want.num_replicas or 1)
    )


async def ensure_stream(
    js: JetStreamContext, stream: DurableStream, *, repair: bool = True, replicas: int = 1
) -> None:
    """Create `stream` if missing; if `repair`, put its subjects, limits and replicas back if
    they were changed (its owner does; a publisher may only create it)."""
    want = stream_config(stream, replicas)
    try:
        info = await js.stream_info(stream.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(want)
        except nats.js.errors.BadRequestError:
            # Another copy created it meanwhile (with the same contract, so the same limits).
            await js.stream_info(stream.name)
        return
    if repair and _differs(info.config, want):
        await js.update_stream(want)


class DurablePublisher:
    """Publishes to a durable stream off the caller's path; each message is retried until the
    stream acknowledges it or `give_up_s` has passed (then it is logged as lost).

    The common case costs one publish and one ack on a subscription shared by every message:
    no task, future or inbox per message (measured: about a third of JetStream's own request
    path). Only a message whose ack failed or is late gets a task of its own, which retries.
    """

    def __init__(
        self,
        nc: NatsClient,
        stream: DurableStream,
        *,
        ack_timeout_s: float = 2.0,
        give_up_s: float = 120.0,
        backoff_s: tuple[float, float] = (0.05, 5.0),
        replicas: int = 1,
    ) -> None:
        self._nc = nc
        self._replicas = replicas
        self._js = nc.jetstream(timeout=ack_timeout_s)
        self._stream = stream
        self._ack_timeout_s = ack_timeout_s
        self._give_up_s = give_up_s
        self._backoff_s = backoff_s
        self._ack_prefix = nc.new_inbox()
        self._acks: Subscription | None = None
        self._background: list[asyncio.Task[None]] = []
        self._next_token = 0
        # token -> (subject, data, msg_id, when its ack is late)
        self._awaiting: dict[str, tuple[str, bytes, str, float]] = {}
        self._outbox: deque[str] = deque()
        self._wake = asyncio.Event()
        self._retrying: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._awaiting) + len(self._retrying)

    async def start(self) -> None:
        """Create the stream (if the bus refuses, publishing tries again later) and listen for
        acks."""
        try:
            await ensure_stream(self._js, self._stream, repair=False, replicas=self._replicas)
        except BUS_ERRORS as exc:
            log.warning(
                "cannot create a durable stream yet",
                extra={"stream": self._stream.name, "error": type(exc).__name__},
            )
        self._acks = await self._nc.subscribe(self._ack_prefix + ".*", cb=self._on_ack)
        self._background = [
            asyncio.create_task(self._send(), name="durable-send"),
            asyncio.create_task(self._sweep(), name="durable-sweep"),
        ]

    def publish(self, subject: str, data: bytes, msg_id: str) -> None:
        """Hand `data` over for delivery; returns at once. `msg_id` dedupes retries."""
        if self._acks is None:
            self._retry(subject, data, msg_id, first_delay_s=0.0)
            return
        self._next_token += 1
        token = str(self._next_token)
        late = asyncio.get_running_loop().time() + self._ack_timeout_s
        self._awaiting[token] = (subject, data, msg_id, late)
        self._outbox.append(token)
        self._wake.set()

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                token = self._outbox.popleft()
                entry = self._awaiting.get(token)
                if entry is None:
                    continue
                subject, data, msg_id, _ = entry
                try:
                    await self._nc.publish(
                        subject, data, reply=f"{self._ack_prefix}.{token}", headers={MSG_ID: msg_id}
                    )
                except BUS_ERRORS:
                    del self._awaiting[token]
                    self._retry(subject, data, msg_id)

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._awaiting.pop(msg.subject.rsplit(".", 1)[-1], None)
        if entry is None:
            return
        # A status header is "no responders": nothing stores the subject. An error is the
        # stream's refusal (full, say). Either way: again, with backoff.
        if (msg.headers and msg.headers.get("Status")) or b'"error"' in msg.data:
            self._retry(*entry[:3])

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._ack_timeout_s / 2)
            now = loop.time()
            for token in [t for t, entry in self._awaiting.items() if entry[3] <= now]:
                subject, data, msg_id, _ = self._awaiting.pop(token)
                self._retry(subject, data, msg_id)

    def _retry(
        self, subject: str, data: bytes, msg_id: str, first_delay_s: float | None = None
    ) -> None:
        if first_delay_s is None and not self._retrying:
            # Once per episode, not once per report: an outage would otherwise flood the log.
            log.warning(
                "durable events not acknowledged; retrying",
                extra={"subject": subject, "msg_id": msg_id},
            )
        task = asyncio.create_task(self._deliver(subject, data, msg_id, first_delay_s))
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)

    async def _deliver(
        self, subject: str, data: bytes, msg_id: str, first_delay_s: float | None
    ) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._give_up_s
        delay, cap = self._backoff_s
        if first_delay_s is not None:
            delay = first_delay_s
        attempts = 0
        while True:
            await asyncio.sleep(delay)
            delay = min(max(delay * 2, self._backoff_s[0]), cap)
            attempts += 1
            try:
                await self._js.publish(subject, data, headers={MSG_ID: msg_id})
                return
            except BUS_ERRORS as exc:
                if loop.time() + delay > give_up:
                    log.error(
                        "durable event lost: the stream did not acknowledge it",
                        extra={
                            "subject": subject,
                            "msg_id": msg_id,
                            "attempts": attempts,
                            "error": type(exc).__name__,
                        },
                    )
                    return
                if isinstance(exc, nats.js.errors.NoStreamResponseError):
                    # Nobody stores the subject: the stream was deleted, or never made.
                    with contextlib.suppress(*BUS_ERRORS):
                        await ensure_stream(
                            self._js, self._stream, repair=False, replicas=self._replicas
                        )

    async def close(self, grace_s: float) -> None:
        """Wait up to `grace_s` for messages still unacknowledged; the rest are logged lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.pending and loop.time() < deadline:
            if self._retrying and not self._awaiting:
                await asyncio.wait(set(self._retrying), timeout=deadline - loop.time())
            else:
                await asyncio.sleep(0.01)
        lost = self.pending
        if lost:
            log.error("durable events lost at shutdown", extra={"count": lost})
        for task in [*self._background, *self._retrying]:
            task.cancel()
        await asyncio.gather(*self._background, *self._retrying, return_exceptions=True)
        self._awaiting.clear()
        if self._acks is not None:
            with contextlib.suppress(*BUS_ERRORS):
                await self._acks.unsubscribe()
            self._acks = None


# A copy asks for at most this many messages at once, and all copies together hold at most
# MAX_ACK_PENDING unacked.
FETCH_BATCH: Final = 256
MAX_ACK_PENDING: Final = 20_000
# How long one pull stays open when nothing is pending.
IDLE_FETCH_S: Final = 1.0

BatchHandler = Callable[[list[Any]], Awaitable[None]]


class DurableRecorder:
    """Pulls `event`s from a shared durable consumer and records them a batch at a time.

    Messages gather until `flush_events` wait or `flush_interval_s` has passed since the first
    of them; then `handler` gets all their payloads at once (one transaction for the lot) and
    every message of the batch is acked once it returns. So a record the handler committed is
    never lost, and a batch it did not commit (it raised, or this copy died first) is delivered
    again, to this copy or another: `handler` must be idempotent. A message that does not decode
    is terminated on arrival. JetStream hands a message to another copy if it is not acked
    within `ack_wait_s`, which must therefore be well over the flush interval.

    A copy waits for the first message of a batch, lets the rest of the window's messages
    gather in the stream, then pulls them in bulk. Pulls are plain requests whose messages
    arrive on one callback subscription: nats-py's `fetch` costs about three times as much CPU
    per message (a task and a timer per message; measured 33 against 11 us).
    """

    def __init__(
        self,
        nc: NatsClient,
        consumer: DurableConsumer,
        event: Event[Any],
        handler: BatchHandler,
        *,
        flush_events: int = 500,
        flush_interval_s: float = 1.0,
        ack_wait_s: float = 30.0,
        retry_delay_s: float = 2.0,
        replicas: int = 1,
    ) -> None:
        if ack_wait_s < 2 * flush_interval_s:
            raise ValueError("the ack wait must be at least twice the flush interval")
        self._nc = nc
        self._js = nc.jetstream()
        self._replicas = replicas
        self._consumer = consumer
        self._event = event
        self._handler = handler
        self._flush_events = flush_events
        self._flush_interval_s = flush_interval_s
        self._ack_wait_s = ack_wait_s
        self._retry_delay_s = retry_delay_s
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{consumer.stream.name}.{consumer.name}"
        self._task: asyncio.Task[None] | None = None
        # Received and decoded, not yet recorded; `_due` is when they must be.
        self._messages: list[Msg] = []
        self._payloads: list[Any] = []
        self._due = 0.0
        # The open pull: how many messages it still may bring; set when it is over.
        self._outstanding = 0
        self._pull_over = asyncio.Event()
        self._consumer_gone = False
        self._stopping = False
        self._stop_requested = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"record-{self._consumer.name}")

    async def stop(self) -> None:
        """Stop pulling and record what was received already; what is not recorded within a
        few seconds comes back after the ack wait."""
        if self._task is not None:
            self._stopping = True
            self._stop_requested.set()
            self._pull_over.set()
            done, _ = await asyncio.wait({self._task}, timeout=10.0)
            if not done:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            with contextlib.suppress(*BUS_ERRORS):
                await self._nc.flush(timeout=2)  # the last acks out before the bus closes

    def _config(self) -> JsConsumerConfig:
        return JsConsumerConfig(
            name=self._consumer.name,
            durable_name=self._consumer.name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait_s,
            max_deliver=-1,
            # Each copy holds up to a batch unacked: room for many copies (the default, 1,000,
            # would stall a third copy until the first two flushed).
            max_ack_pending=MAX_ACK_PENDING,
            filter_subject=self._event.subject,
        )

    async def _ensure_consumer(self) -> None:
        """Make the stream and the consumer if missing; put the consumer's ack wait and pending
        limit back if it exists with others (made by an older copy, or changed by hand)."""
        stream = self._consumer.stream
        delay = 0.2
        while True:
            try:
                await ensure_stream(self._js, stream, replicas=self._replicas)
                want = self._config()
                try:
                    have = (await self._js.consumer_info(stream.name, self._consumer.name)).config
                except nats.js.errors.NotFoundError:
                    await self._js.add_consumer(stream.name, want)
                    return
                if (have.ack_wait, have.max_ack_pending) != (want.ack_wait, want.max_ack_pending):
                    await self._js.add_consumer(stream.name, want)
                return
            except BUS_ERRORS as exc:
                log.warning(
                    "cannot consume a durable stream yet; retrying",
                    extra={"stream": stream.name, "error": type(exc).__name__},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run(self) -> None:
        await self._ensure_consumer()
        inbox = self._nc.new_inbox()
        subscription = await self._nc.subscribe(inbox, cb=self._receive)
        backlog = False
        try:
            while not self._stopping:
                if not backlog:
                    if not self._messages:
                        # Idle: a pull for the first report, which opens the batch's window.
                        await self._pull(inbox, 1, IDLE_FETCH_S)
                        continue
                    # The window's reports wait in the stream and then come in bulk: one by
                    # one as they are published, each costs this copy a wakeup of its own.
                    await self._until_due()
                backlog = await self._take_waiting(inbox)
                if self._messages:
                    await self._flush()
        except nats.errors.ConnectionClosedError:
            return
        finally:
            # Stopping: what this copy received is written now rather than redelivered after
            # the ack wait (drain hands over what is still queued in the client first); what
            # waits in the stream stays there for the other copies.
            with contextlib.suppress(*BUS_ERRORS):
                await subscription.drain()  # type: ignore[no-untyped-call]
            if self._messages:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._flush(), timeout=5.0)

    async def _until_due(self) -> None:
        with contextlib.suppress(TimeoutError):
            delay = self._due - asyncio.get_running_loop().time()
            await asyncio.wait_for(self._stop_requested.wait(), timeout=max(0.0, delay))

    async def _take_waiting(self, inbox: str) -> bool:
        """Pull what waits, up to a batch; whether more may be waiting (the batch is full)."""
        while not self._stopping:
            room = self._flush_events - len(self._messages)
            if room <= 0:
                return True
            await self._pull(inbox, min(room, FETCH_BATCH), None)
            if self._outstanding > 0:
                return False  # the stream had fewer than asked for
        return False

    async def _pull(self, inbox: str, batch: int, expires_s: float | None) -> None:
        """Ask for up to `batch` messages and wait until they came or the pull ended: it
        expired (`expires_s`), or, without one, the stream had no more."""
        self._outstanding = batch
        self._pull_over.clear()
        ask: dict[str, Any] = {"batch": batch}
        if expires_s is None:
            ask["no_wait"] = True
        else:
            ask["expires"] = int(expires_s * 1e9)
        try:
            await self._nc.publish(self._next, orjson.dumps(ask), reply=inbox)
        except nats.errors.ConnectionClosedError:
            raise
        except BUS_ERRORS:
            self._consumer_gone = True
        else:
            try:
                await asyncio.wait_for(self._pull_over.wait(), timeout=(expires_s or 0) + 2.0)
            except TimeoutError:
                # No end of the pull, not even its expiry: is the consumer still there?
                self._consumer_gone = True
        if self._consumer_gone:
            # Deleted by someone, say: make it again (the stream too, if need be).
            log.warning(
                "pulling from a durable stream failed", extra={"consumer": self._consumer.name}
            )
            await asyncio.sleep(1.0)
            await self._ensure_consumer()
            self._consumer_gone = False

    async def _receive(self, message: Msg) -> None:
        headers = message.headers or {}
        status = headers.get("Status")
        if status is not None:
            # 408: the pull expired; 409: it was cut short (the consumer deleted, a leader
            # change, or too many pulls waiting); 503: nobody answers for the consumer.
            exceeded = headers.get("Description", "").startswith("Exceeded")
            if status in ("409", "503") and not exceeded:
                self._consumer_gone = True
            self._pull_over.set()
            return
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._pull_over.set()
        try:
            payload = self._event.payload.model_validate_json(message.data)
        except ValidationError:
            # It will never decode: delivering it again would only block the ones behind.
            log.error("malformed durable event dropped", extra={"event": self._event.subject})
            with contextlib.suppress(*BUS_ERRORS):
                await message.term()
            return
        if not self._messages:
            self._due = asyncio.get_running_loop().time() + self._flush_interval_s
        self._messages.append(message)
        self._payloads.append(payload)

    async def _flush(self) -> None:
        messages, payloads = self._messages, self._payloads
        self._messages, self._payloads = [], []
        try:
            await self._handler(payloads)
        except Exception as exc:
            log.warning(
                "recording durable events failed; they will be delivered again",
                extra={
                    "event": self._event.subject,
                    "count": len(messages),
                    "error": type(exc).__name__,
                },
            )
            recorded = False
        else:
            recorded = True
        for message in messages:
            with contextlib.suppress(*BUS_ERRORS):
                if recorded:
                    await message.ack()
                else:
                    await message.nak(delay=self._retry_delay_s)
