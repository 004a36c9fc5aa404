"""Usage the client did not ask for is stripped from the chunks it gets, byte for byte otherwise."""

from __future__ import annotations

import orjson

from byorouter_router.usage import ask_for_usage, wants_usage, without_usage

CHUNK = b'{"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}]}'


def test_chunks_without_usage_pass_through_unchanged() -> None:
    lines = CHUNK + b"\n" + CHUNK
    assert without_usage(lines) is lines


def test_null_usage_on_every_chunk_is_removed() -> None:
    with_null = b'{"id":"x","choices":[],"usage":null}'
    assert without_usage(with_null) == b'{"id":"x","choices":[]}'


def test_usage_only_chunk_is_dropped_and_usage_on_a_content_chunk_removed() -> None:
    usage_only = b'{"id":"x","choices":[],"usage":{"total_tokens":3}}'
    content = b'{"id":"x","choices":[{"index":0}],"usage":{"total_tokens":3}}'
    kept = without_usage(CHUNK + b"\n" + usage_only + b"\n" + content)
    lines = kept.split(b"\n")
    assert lines[0] == CHUNK
    assert [orjson.loads(line) for line in lines[1:]] == [{"id": "x", "choices": [{"index": 0}]}]


def test_only_usage_gives_nothing_to_send() -> None:
    assert without_usage(b'{"id":"x","choices":[],"usage":{"total_tokens":3}}') == b""


def test_asking_for_usage_keeps_the_clients_other_stream_options() -> None:
    body = {"stream": True, "stream_options": {"other": 1}}
    assert not wants_usage(body)
    ask_for_usage(body)
    assert body["stream_options"] == {"other": 1, "include_usage": True}
    assert wants_usage(body)
