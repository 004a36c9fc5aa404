"""Property tests of the SSE reader: however an upstream's bytes are cut into reads, and whatever
line ends it uses, the events are those of the whole stream read by the SSE specification.

The reference below is the specification's line-by-line algorithm, written for clarity, not
speed; `SseDecoder` must agree with it on any bytes at all, garbage included.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byorouter_router.providers.sse import OversizedEvent, SseDecoder

PROPERTY = settings(max_examples=200, deadline=None)
_LINE_END = re.compile(rb"\r\n|\r|\n")


def reference_events(stream: bytes) -> list[bytes]:
    """The data of each event in `stream`, a last one without its blank line included (as
    `SseDecoder.end` gives it)."""
    found: list[bytes] = []
    lines: list[bytes] | None = None
    for line in [*_LINE_END.split(stream), b""]:
        if not line:
            if lines is not None:
                found.append(b"\n".join(lines))
            lines = None
            continue
        name, colon, value = line.partition(b":")
        if name != b"data":
            continue
        if colon and value.startswith(b" "):
            value = value[1:]
        lines = [value] if lines is None else [*lines, value]
    return found


def decode(reads: list[bytes], max_event_bytes: int = 1024 * 1024) -> list[bytes]:
    decoder = SseDecoder(max_event_bytes)
    found: list[bytes] = []
    for data in reads:
        found += decoder.feed(data)
    return found + decoder.end()


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    """`stream` in reads that end at `points` (any positions, repeats give empty reads)."""
    bounds = [0, *sorted(p % (len(stream) + 1) for p in points), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


line_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])
# Values hold no line end: in SSE a value cannot.
values = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
field_lines = st.one_of(
    values.map(lambda v: b"data: " + v),
    values.map(lambda v: b"data:" + v),
    st.just(b"data"),
    values.map(lambda v: b":" + v),  # a comment, a keep-alive
    values.map(lambda v: b"event: " + v),
    values.map(lambda v: b"id: " + v),
    st.just(b"retry: 1000"),
    values.map(lambda v: b"datax: " + v),  # not the data field
)


@st.composite
def event_streams(draw: st.DrawFn) -> bytes:
    """A valid event stream: events of field lines, each ended by a blank line, any line ends
    (also mixed), sometimes a last event without its blank line."""
    out = b""
    for _ in range(draw(st.integers(0, 8))):
        for line in draw(st.lists(field_lines, min_size=0, max_size=5)):
            out += line + draw(line_ends)
        out += draw(line_ends)
    if draw(st.booleans()):
        out += draw(field_lines)
    return out


@PROPERTY
@given(stream=event_streams(), points=st.lists(st.integers(0, 10_000), max_size=12))
def test_any_cutting_of_a_valid_stream_gives_the_events_of_the_whole(
    stream: bytes, points: list[int]
) -> None:
    assert decode(cut(stream, points)) == decode([stream]) == reference_events(stream)


@PROPERTY
@given(stream=event_streams())
def test_a_stream_read_one_byte_at_a_time_gives_the_same_events(stream: bytes) -> None:
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == reference_events(stream)


@PROPERTY
@given(
    stream=st.binary(max_size=400) | st.lists(field_lines | line_ends).map(b"".join),
    points=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_garbage_never_raises_and_reads_as_the_specification_says(
    stream: bytes, points: list[int]
) -> None:
    assert decode(cut(stream, points)) == reference_events(stream)


@PROPERTY
@given(stream=st.binary(max_size=300), points=st.lists(st.integers(0, 10_000), max_size=8))
def test_past_the_size_limit_the_only_error_is_oversized_event(
    stream: bytes, points: list[int]
) -> None:
    try:
        found = decode(cut(stream, points), max_event_bytes=32)
    except OversizedEvent:
        return
    assert found == reference_events(stream)


# --- the failing examples the properties found, kept as plain tests ----------------------------


def test_lone_cr_line_ends_end_lines_and_events() -> None:
    assert decode([b"data: a\rdata: b\r\rdata: c\r\r"]) == [b"a\nb", b"c"]


def test_a_cr_at_the_end_of_a_read_followed_by_lf_is_one_line_end() -> None:
    assert decode([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [b"a\nb"]


def test_an_empty_read_between_cr_and_lf_changes_nothing() -> None:
    assert decode([b"data: a\r", b"", b"\ndata: b\n\n"]) == [b"a\nb"]


def test_an_event_ended_by_cr_cr_comes_out_before_the_next_read() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r\r") == [b"a"]


def test_a_bare_data_line_is_an_empty_data_line() -> None:
    assert decode([b"data: a\ndata\n\ndata\n\n"]) == [b"a\n", b""]


@pytest.mark.parametrize("stream", [b"data: a\n\n\n\ndata: b\n\n", b"\n\n\ndata: a\n\n"])
def test_extra_blank_lines_between_events_change_nothing(stream: bytes) -> None:
    assert decode([stream]) == reference_events(stream)
