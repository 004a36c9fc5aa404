"""The one SSE reader every provider streams through: events come out whole, however they arrive."""

from __future__ import annotations

import pytest

from byorouter_router.providers.sse import OversizedEvent, SseDecoder


def _feed_all(decoder: SseDecoder, *reads: bytes) -> list[bytes]:
    found: list[bytes] = []
    for data in reads:
        found += decoder.feed(data)
    return found + decoder.end()


def test_complete_events_in_one_read_come_out_in_order() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata: {"b":2}\n\n') == [b'{"a":1}', b'{"b":2}']


def test_event_split_across_reads_comes_out_once_it_is_complete() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"content":"hel') == []
    assert decoder.feed(b'lo"}\n') == []
    assert decoder.feed(b'\ndata: {"next"') == [b'{"content":"hello"}']
    assert decoder.feed(b":1}\n\n") == [b'{"next":1}']


def test_every_byte_in_its_own_read_gives_the_same_events() -> None:
    stream = b'data: {"a":1}\r\n\r\n: keep-alive\r\n\r\ndata: {"b":2}\r\n\r\ndata: [DONE]\r\n\r\n'
    reads = [stream[i : i + 1] for i in range(len(stream))]
    assert _feed_all(SseDecoder(), *reads) == [b'{"a":1}', b'{"b":2}', b"[DONE]"]


def test_comments_and_keep_alives_carry_no_data() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b": OPENROUTER PROCESSING\n\n:\n\n") == []
    assert decoder.feed(b': ping\ndata: {"a":1}\n\n') == [b'{"a":1}']


def test_event_id_and_retry_fields_are_skipped() -> None:
    decoder = SseDecoder()
    stream = b'event: message_start\nid: 7\nretry: 1000\ndata: {"type":"message_start"}\n\n'
    assert decoder.feed(stream) == [b'{"type":"message_start"}']


def test_crlf_line_ends_read_like_lf_even_when_split_between_cr_and_lf() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"a":1}\r') == []
    # The "\r" ends the blank line whatever follows, so the event is complete here.
    assert decoder.feed(b"\n\r") == [b'{"a":1}']
    assert decoder.feed(b'\ndata: {"b":2}\r\n\r\n') == [b'{"b":2}']


def test_data_without_the_space_after_the_colon_is_read_whole() -> None:
    assert SseDecoder().feed(b'data:{"a":1}\n\n') == [b'{"a":1}']


def test_data_lines_of_one_event_are_joined_with_newlines() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"a":\ndata: 1}\n\n') == [b'{"a":\n1}']
    assert decoder.joined_lines


def test_single_line_events_do_not_report_joined_lines() -> None:
    decoder = SseDecoder()
    decoder.feed(b'data: {"a":1}\n\ndata: {"b":2}\n\n')
    assert not decoder.joined_lines


def test_a_last_event_without_its_blank_line_is_given_at_the_end() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata: {"b":2}\n') == [b'{"a":1}']
    assert decoder.end() == [b'{"b":2}']
    assert decoder.end() == []


def test_whitespace_left_at_the_end_is_no_event() -> None:
    decoder = SseDecoder()
    decoder.feed(b'data: {"a":1}\n\n\n')
    assert decoder.end() == []


def test_an_event_that_never_ends_is_refused_past_the_limit() -> None:
    decoder = SseDecoder(max_event_bytes=16)
    assert decoder.feed(b"data: 0123456789") == []
    with pytest.raises(OversizedEvent):
        decoder.feed(b"abcdef")
