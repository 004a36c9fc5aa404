"""What the router reports as a request's usage: the provider's counts and their details, or for
an answer that broke midway, an estimate of what was delivered."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from byorouter_common.contracts.events import UsageEvent
from byorouter_router.credentials import ConnectionCredentials
from byorouter_router.fallback import Candidate
from byorouter_router.providers.anthropic.response import to_openai_usage
from byorouter_router.usage import delivered_deltas, encoded, streamed_usage, usage_event

CONNECTION = ConnectionCredentials("conn_1", "app_1", fallback_to_default=False, providers={})
SERVED = Candidate("openai", "gpt-4o-mini")


def test_openai_cached_and_reasoning_tokens_are_reported() -> None:
    event = usage_event(
        "req_1",
        CONNECTION,
        SERVED,
        {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 12},
        },
    )
    assert (event.prompt_tokens, event.completion_tokens, event.total_tokens) == (120, 30, 150)
    assert (event.cached_tokens, event.cache_write_tokens, event.reasoning_tokens) == (100, 0, 12)
    assert not event.partial
    assert not event.estimated


def test_anthropic_cache_reads_and_writes_are_reported() -> None:
    translated = to_openai_usage(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 50,
            "output_tokens": 3,
        }
    )
    event = usage_event("req_1", CONNECTION, Candidate("anthropic", "claude"), translated)
    assert event.prompt_tokens == 160
    assert (event.cached_tokens, event.cache_write_tokens) == (100, 50)


def test_a_broken_stream_without_usage_is_billed_the_deltas_it_delivered() -> None:
    lines = b"\n".join(
        [
            b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
            b'{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}',
            b'{"choices":[{"index":0,"delta":{"content":"Hello"}}]}',
            b'{"choices":[{"index":0,"delta":{"content":" there"}}]}',
        ]
    )
    delivered = delivered_deltas(lines)
    assert delivered == 3
    event = usage_event("req_1", CONNECTION, SERVED, None, partial=True, delivered=delivered)
    assert (event.prompt_tokens, event.completion_tokens, event.total_tokens) == (0, 3, 3)
    assert event.partial
    assert event.estimated


def test_a_broken_stream_that_had_its_usage_is_billed_that_usage() -> None:
    usage = streamed_usage(
        b'{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":null}\n'
        b'{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":9,"total_tokens":13}}'
    )
    event = usage_event("req_1", CONNECTION, SERVED, usage, partial=True, delivered=1)
    assert (event.prompt_tokens, event.completion_tokens, event.total_tokens) == (4, 9, 13)
    assert event.partial
    assert not event.estimated


def test_content_that_quotes_usage_is_not_read_as_usage() -> None:
    line = b'{"choices":[{"index":0,"delta":{"content":"\\"usage\\":{\\"prompt_tokens\\":1}"}}]}'
    assert streamed_usage(line) is None


@pytest.mark.parametrize(
    "at",
    [datetime(2026, 12, 2, 11, 25, 51, 180480, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)],
)
def test_the_report_is_encoded_as_the_contract_writes_it(at: datetime) -> None:
    # Keystore reads it with the contract model: the fast encoding must be the same bytes.
    event = usage_event("req_1", CONNECTION, SERVED, {"prompt_tokens": 4, "total_tokens": 4})
    event = event.model_copy(update={"at": at})
    assert encoded(event) == event.model_dump_json().encode()
    assert UsageEvent.model_validate_json(encoded(event)) == event
