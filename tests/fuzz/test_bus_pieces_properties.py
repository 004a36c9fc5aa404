"""Property tests of messages larger than the bus carries (decision 0008): replies sent as
`Byo-More` pieces and requests uploaded in `Byo-Parts` parts come out byte-identical, and a
piece or part lost, repeated or out of place is a clear error, never a wrong message.

Replies are read by the real `ReplyStream` from its queue, as the process-wide inbox fills it;
uploads go through the session's real NATS.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from byorouter_common.bus import (
    CHUNK,
    DONE,
    KEEPALIVE,
    MORE,
    RESULT,
    START,
    StreamWriter,
    receive_rest,
)
from byorouter_common.bus.streams import ReplyStream, StreamMux
from byorouter_common.bus.uploads import HDR_PART, HEADROOM, split_request
from byorouter_common.contracts import HDR_KIND, HDR_MORE, HDR_SEQ
from byorouter_common.errors import ByoError

PROPERTY = settings(max_examples=200, deadline=None)
IDLE_S = 0.02


class RecordingBus:
    """Stands in for the NATS client a `StreamWriter` publishes on: keeps what it sent."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self.sent: list[Msg] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.sent.append(Msg(None, subject, "", data, headers))  # type: ignore[arg-type]


def read_all(sent: list[Msg]) -> list[tuple[str, bytes]]:
    """Every message `ReplyStream` gives for `sent`, up to the terminal one; raises its error."""

    async def run() -> list[tuple[str, bytes]]:
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        for msg in sent:
            queue.put_nowait(msg)
        stream = ReplyStream(StreamMux(None), "inbox", queue, IDLE_S, "router")  # type: ignore[arg-type]
        got: list[tuple[str, bytes]] = []
        while not stream.finished:
            got.append(await stream.next())
        return got

    return asyncio.run(run())


def written(messages: list[tuple[str, bytes]], max_payload: int) -> list[Msg]:
    bus = RecordingBus(max_payload)

    async def run() -> None:
        writer = StreamWriter(bus, "inbox")  # type: ignore[arg-type]
        for kind, data in messages:
            await writer.send(kind, data)

    asyncio.run(run())
    return bus.sent


replies = st.builds(
    lambda middle, last: [(START, b"{}"), *middle, last],
    st.lists(
        st.tuples(st.sampled_from([CHUNK, KEEPALIVE]), st.binary(max_size=300)).map(
            lambda m: m if m[0] == CHUNK else (KEEPALIVE, b"")
        ),
        max_size=6,
    ),
    st.tuples(st.sampled_from([DONE, RESULT]), st.binary(max_size=600)),
)
# The bus limit is at least the headroom plus one byte, so every piece carries something.
payload_limits = st.integers(HEADROOM + 1, HEADROOM + 200)


def _without_keepalives(messages: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [m for m in messages if m[0] != KEEPALIVE]


@PROPERTY
@given(messages=replies, max_payload=payload_limits)
def test_a_reply_in_pieces_of_any_size_reads_as_it_was_sent(
    messages: list[tuple[str, bytes]], max_payload: int
) -> None:
    sent = written(messages, max_payload)
    assert all(len(m.data) <= max_payload - HEADROOM for m in sent)
    assert read_all(sent) == _without_keepalives(messages)


@st.composite
def pieced_replies(draw: st.DrawFn) -> list[Msg]:
    """A reply whose messages were cut into pieces of sizes the sender chose freely."""
    messages = draw(replies)
    sent: list[Msg] = []
    for kind, data in messages:
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
        bounds = [0, *cuts, len(data)]
        pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
        for i, piece in enumerate(pieces):
            headers = {HDR_KIND: kind, HDR_SEQ: str(len(sent))}
            if i < len(pieces) - 1:
                headers[HDR_MORE] = "1"
            sent.append(Msg(None, "inbox", "", piece, headers))  # type: ignore[arg-type]
    return sent


def _messages_of(sent: list[Msg]) -> list[tuple[str, bytes]]:
    """What `sent` says, read the slow obvious way."""
    out: list[tuple[str, bytes]] = []
    buffer = b""
    for msg in sent:
        buffer += msg.data
        if HDR_MORE not in (msg.headers or {}):
            out.append((msg.headers[HDR_KIND], buffer))  # type: ignore[index]
            buffer = b""
    return _without_keepalives(out)


@PROPERTY
@given(sent=pieced_replies())
def test_pieces_of_any_sizes_join_byte_identically(sent: list[Msg]) -> None:
    assert read_all(sent) == _messages_of(sent)


@PROPERTY
@given(sent=pieced_replies(), data=st.data())
def test_a_lost_repeated_or_moved_piece_is_an_error_never_a_wrong_reply(
    sent: list[Msg], data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(sent) - 1))
    how = data.draw(st.sampled_from(["lose", "repeat", "move"]))
    damaged = list(sent)
    if how == "lose":
        del damaged[i]
    elif how == "repeat":
        damaged.insert(i, sent[i])
    else:
        j = data.draw(st.integers(0, len(sent) - 1).filter(lambda j: j != i))
        damaged[i], damaged[j] = damaged[j], damaged[i]
    try:
        got = read_all(damaged)
    except ByoError as error:
        assert error.code in ("stream_gap", "timeout")  # noqa: PT017
        return
    # Damage after the last message (a repeated terminal one) changes nothing the caller reads.
    assert got == _messages_of(sent)


def test_a_message_begun_in_pieces_then_another_kind_is_a_gap_not_a_join() -> None:
    sent = [
        Msg(None, "inbox", "", b"{}", {HDR_KIND: START, HDR_SEQ: "0"}),  # type: ignore[arg-type]
        Msg(None, "inbox", "", b"half", {HDR_KIND: CHUNK, HDR_SEQ: "1", HDR_MORE: "1"}),  # type: ignore[arg-type]
        Msg(None, "inbox", "", b"{}", {HDR_KIND: DONE, HDR_SEQ: "2"}),  # type: ignore[arg-type]
    ]
    with pytest.raises(ByoError) as caught:
        read_all(sent)
    assert caught.value.code == "stream_gap"


# --- uploads ----------------------------------------------------------------------------------


@PROPERTY
@given(data=st.binary(max_size=2000), max_payload=payload_limits)
def test_a_request_split_into_parts_joins_byte_identically(data: bytes, max_payload: int) -> None:
    parts = split_request(data, max_payload)
    assert b"".join(parts) == data
    assert all(len(p) <= max_payload - HEADROOM for p in parts)
    assert len(parts) == 1 or all(parts)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


class UploadingCaller:
    """The caller's side of an upload: on `more`, publishes `parts` in the order given."""

    def __init__(self, nc: NatsClient, parts: list[tuple[int | None, bytes]]) -> None:
        self._nc = nc
        self._parts = parts

    async def send(self, kind: str, data: bytes = b"") -> None:
        assert kind == MORE
        for place, part in self._parts:
            headers: Any = None if place is None else {HDR_PART: str(place)}
            await self._nc.publish(data.decode(), part, headers=headers)


async def _upload(
    nc: NatsClient, first: bytes, parts: list[tuple[int | None, bytes]], n: int
) -> bytes:
    subject = f"byorouter.test.upload.{secrets.token_hex(4)}"
    return await receive_rest(nc, first, n, subject, UploadingCaller(nc, parts), timeout_s=0.5)


async def test_parts_in_their_places_join_whole(nc: NatsClient) -> None:
    parts: list[tuple[int | None, bytes]] = [(1, b"b" * 10), (2, b"c" * 3)]
    assert await _upload(nc, b"a", parts, 3) == b"a" + b"b" * 10 + b"c" * 3


async def test_parts_from_a_sender_that_names_no_places_are_taken_in_order(
    nc: NatsClient,
) -> None:
    assert await _upload(nc, b"a", [(None, b"b"), (None, b"c")], 3) == b"abc"


@pytest.mark.parametrize(
    "parts",
    [
        [(2, b"c"), (1, b"b")],  # swapped
        [(1, b"b"), (1, b"b")],  # repeated in place of the second
    ],
    ids=["swapped", "repeated"],
)
async def test_parts_out_of_place_are_refused_not_joined(
    nc: NatsClient, parts: list[tuple[int | None, bytes]]
) -> None:
    with pytest.raises(ByoError) as caught:
        await _upload(nc, b"a", parts, 3)
    assert caught.value.status == 400
    assert "out of order" in caught.value.message


async def test_a_missing_part_is_refused_as_incomplete(nc: NatsClient) -> None:
    with pytest.raises(ByoError) as caught:
        await _upload(nc, b"a", [(1, b"b")], 3)
    assert caught.value.status == 400
    assert "incomplete" in caught.value.message
