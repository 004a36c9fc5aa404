"""Durable events on a real JetStream: a publish is retried until stored, stored once per id,
given up on within its bound; a record is acked only once its handler succeeded."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy

from byorouter_cli.backends import NatsServer
from byorouter_common.bus import DurablePublisher, DurableRecorder, ensure_stream
from byorouter_common.bus.durable import MAX_ACK_PENDING
from byorouter_common.contracts.base import Contract, DurableConsumer, DurableStream, Event


class Report(Contract):
    n: int


@pytest.fixture(scope="module")
def js_url() -> Iterator[str]:
    server = NatsServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def nc(js_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(js_url)
    yield client
    await client.close()


@pytest.fixture
def event() -> Event[Report]:
    return Event(f"byorouter.test.{secrets.token_hex(4)}", Report, "a test report")


@pytest.fixture
def stream(event: Event[Report]) -> DurableStream:
    return DurableStream(
        f"TEST_{secrets.token_hex(4)}",
        (event,),
        max_age_s=60,
        max_bytes=2**20,
        duplicate_window_s=60,
    )


async def stored(nc: NatsClient, stream: DurableStream) -> int:
    info = await nc.jetstream().stream_info(stream.name)
    return info.state.messages


async def until(check: object, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.05)


async def test_a_publish_while_the_stream_is_gone_is_stored_once_it_is_made_again(
    nc: NatsClient, stream: DurableStream, event: Event[Report]
) -> None:
    publisher = DurablePublisher(nc, stream, give_up_s=10)
    await publisher.start()
    # Deleted by someone: nobody stores the subject, so the first try gets no ack.
    await nc.jetstream().delete_stream(stream.name)
    publisher.publish(event.subject, Report(n=1).model_dump_json().encode(), "id-1")
    await publisher.close(grace_s=10)
    assert await stored(nc, stream) == 1


async def test_a_publish_made_before_start_is_stored_too(
    nc: NatsClient, stream: DurableStream, event: Event[Report]
) -> None:
    publisher = DurablePublisher(nc, stream, give_up_s=10)
    publisher.publish(event.subject, Report(n=1).model_dump_json().encode(), "id-1")
    await publisher.close(grace_s=10)
    assert await stored(nc, stream) == 1


async def test_the_same_message_id_is_stored_once(
    nc: NatsClient, stream: DurableStream, event: Event[Report]
) -> None:
    publisher = DurablePublisher(nc, stream)
    await publisher.start()
    for msg_id in ("a", "a", "b"):
        publisher.publish(event.subject, Report(n=1).model_dump_json().encode(), msg_id)
    await publisher.close(grace_s=10)
    assert await stored(nc, stream) == 2


async def test_a_publish_never_acknowledged_is_given_up_within_its_bound(
    js_url: str, stream: DurableStream, event: Event[Report], caplog: pytest.LogCaptureFixture
) -> None:
    client = await nats.connect(js_url)
    publisher = DurablePublisher(client, stream, give_up_s=0.5, backoff_s=(0.05, 0.1))
    await client.close()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="byorouter_common.bus"):
        publisher.publish(event.subject, b'{"n": 424242}', "lost-1")
        await publisher.close(grace_s=5)
    assert time.monotonic() - started < 2
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    assert lost
    assert lost[0].msg_id == "lost-1"  # type: ignore[attr-defined]
    # The report itself is never logged.
    assert "424242" not in caplog.text


async def test_a_record_that_failed_is_delivered_again_and_acked_once_it_succeeds(
    nc: NatsClient, stream: DurableStream, event: Event[Report]
) -> None:
    await ensure_stream(nc.jetstream(), stream)
    seen: list[int] = []

    async def record(reports: list[Report]) -> None:
        seen.extend(report.n for report in reports)
        if len(seen) == 1:
            raise RuntimeError("database down")

    consumer = DurableConsumer(stream, "recorder", "test")
    recorder = DurableRecorder(
        nc, consumer, event, record, flush_interval_s=0.05, retry_delay_s=0.1
    )
    recorder.start()
    try:
        await nc.jetstream().publish(event.subject, Report(n=7).model_dump_json().encode())
        await nc.jetstream().publish(event.subject, b"not a report")

        async def both_handled() -> bool:
            return seen == [7, 7] and await stored(nc, stream) == 0

        # Work-queue retention: an acked (or terminated) message leaves the stream.
        await until(both_handled)
    finally:
        await recorder.stop()
    assert seen == [7, 7]


async def test_acks_that_come_late_are_retried_and_still_stored_once_each(
    nc: NatsClient, stream: DurableStream, event: Event[Report]
) -> None:
    # Every ack is "late": each message is also sent again, and the message id dedupes it.
    publisher = DurablePublisher(nc, stream, ack_timeout_s=0.001, backoff_s=(0.01, 0.05))
    await publisher.start()
    for n in range(20):
        publisher.publish(event.subject, Report(n=n).model_dump_json().encode(), f"id-{n}")
    await publisher.close(grace_s=10)
    assert await stored(nc, stream) == 20


async def test_the_owner_puts_changed_limits_back_and_a_publisher_leaves_them(
    nc: NatsClient, stream: DurableStream
) -> None:
    js = nc.jetstream()
    await ensure_stream(js, stream)
    changed = (await js.stream_info(stream.name)).config
    changed.max_age = 90.0  # someone changed it: unrecorded reports would live by other rules
    await js.update_stream(changed)
    await ensure_stream(js, stream, repair=False)
    assert (await js.stream_info(stream.name)).config.max_age == 90.0
    await ensure_stream(js, stream)
    assert (await js.stream_info(stream.name)).config.max_age == stream.max_age_s


async def test_a_deleted_consumer_is_made_again_and_recording_goes_on(
    nc: NatsClient, stream: DurableStream, event: Event[Report]
) -> None:
    seen: list[int] = []

    async def record(reports: list[Report]) -> None:
        seen.extend(report.n for report in reports)

    consumer = DurableConsumer(stream, "recorder", "test")
    recorder = DurableRecorder(nc, consumer, event, record, flush_interval_s=0.05)
    recorder.start()
    js = nc.jetstream()
    try:

        async def consuming() -> bool:
            try:
                await js.consumer_info(stream.name, consumer.name)
            except nats.js.errors.NotFoundError:
                return False
            return True

        await until(consuming)
        await js.delete_consumer(stream.name, consumer.name)
        await js.publish(event.subject, Report(n=1).model_dump_json().encode())

        async def recorded() -> bool:
            return seen == [1]

        await until(recorded, within_s=15)
    finally:
        await recorder.stop()


async def test_a_test_nats_server_keeps_its_streams_across_a_restart(
    stream: DurableStream, event: Event[Report]
) -> None:
    server = NatsServer().start()
    try:
        client = await nats.connect(server.url)
        await ensure_stream(client.jetstream(), stream)
        await client.jetstream().publish(event.subject, b'{"n": 1}')
        await client.close()
        server.stop()
        server.start()
        client = await nats.connect(server.url)
        assert await stored(client, stream) == 1
        await client.close()
    finally:
        server.stop()


async def consumer_state(nc: NatsClient, consumer: DurableConsumer) -> tuple[int, int]:
    """(messages fetched and not yet acked, messages not yet fetched) of `consumer`."""
    info = await nc.jetstream().consumer_info(consumer.stream.name, consumer.name)
    return info.num_ack_pending, info.num_pending


async def test_records_come_in_batches_of_at_most_flush_events_and_all_are_acked(
    nc: NatsClient, stream: DurableStream, event: Event[Report]
) -> None:
    await ensure_stream(nc.jetstream(), stream)
    batches: list[list[int]] = []

    async def record(reports: list[Report]) -> None:
        batches.append([report.n for report in reports])

    for n in range(45):
        await nc.jetstream().publish(event.subject, Report(n=n).model_dump_json().encode())
    consumer = DurableConsumer(stream, "recorder", "test")
    recorder = DurableRecorder(nc, consumer, event, record, flush_events=10)
    recorder.start()
    try:

        async def all_recorded() -> bool:
            return sum(map(len, batches)) == 45 and await stored(nc, stream) == 0

        await until(all_recorded)
    finally:
        await recorder.stop()
    assert sorted(n for batch in batches for n in batch) == list(range(45))
    # Waiting when the recorder started: full batches, not one transaction per report.
    assert [len(batch) for batch in batches] == [10, 10, 10, 10, 5]


async def test_a_recorder_told_to_stop_records_what_it_holds_and_leaves_the_rest_to_others(
    nc: NatsClient, stream: DurableStream, event: Event[Report]
) -> None:
    await ensure_stream(nc.jetstream(), stream)
    seen: list[int] = []

    async def record(reports: list[Report]) -> None:
        seen.extend(report.n for report in reports)

    consumer = DurableConsumer(stream, "recorder", "test")
    # A flush far away: without the stop, nothing would be written for a minute.
    recorder = DurableRecorder(nc, consumer, event, record, flush_interval_s=60, ack_wait_s=120)
    recorder.start()
    try:
        for n in range(5):
            await nc.jetstream().publish(event.subject, Report(n=n).model_dump_json().encode())

        async def holds_the_first() -> bool:
            # The first opens the batch's window; the others wait in the stream meanwhile.
            return await consumer_state(nc, consumer) == (1, 4)

        await until(holds_the_first)
        assert seen == []
    finally:
        await recorder.stop()
    assert seen == [0]

    async def settled() -> bool:
        return await stored(nc, stream) == 4 and await consumer_state(nc, consumer) == (0, 4)

    # The one it held is acked, so no copy gets it again after the ack wait (two minutes
    # away); the rest are free for another copy at once.
    await until(settled)


async def test_a_recorder_puts_its_ack_wait_back_on_an_existing_consumer(
    nc: NatsClient, stream: DurableStream, event: Event[Report]
) -> None:
    js = nc.jetstream()
    await ensure_stream(js, stream)
    consumer = DurableConsumer(stream, "recorder", "test")
    # As an older keystore made it: another ack wait and the server's pending limit.
    await js.add_consumer(
        stream.name,
        durable_name=consumer.name,
        name=consumer.name,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
        filter_subject=event.subject,
    )

    async def record(reports: list[Report]) -> None:
        pass

    recorder = DurableRecorder(nc, consumer, event, record, ack_wait_s=7)
    recorder.start()
    try:

        async def repaired() -> bool:
            config = (await js.consumer_info(stream.name, consumer.name)).config
            return (config.ack_wait, config.max_ack_pending) == (7, MAX_ACK_PENDING)

        await until(repaired)
    finally:
        await recorder.stop()
