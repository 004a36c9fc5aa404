"""The retry and fallback policy on its own: no bus, no HTTP, a fake clock that sleeps instantly."""

from __future__ import annotations

import random

import pytest

from byorouter_common.errors import ByoError
from byorouter_router.fallback import (
    AppDefaultTarget,
    Candidate,
    FallbackChain,
    FallbackTarget,
    RetryPolicy,
    Verdict,
    classify,
    fallback_candidates,
)
from byorouter_router.providers.errors import StalledUpstream

OPENAI = Candidate("openai", "gpt-4o")
SELFHOSTED = Candidate("selfhosted", "llama3")

RATE_LIMITED = ByoError(429, "upstream_rate_limited", "slow down", retry_after=1.0)
BUSY = ByoError(429, "upstream_rate_limited", "slow down")  # no Retry-After
SERVER_ERROR = ByoError(502, "upstream_error", "boom")
TIMED_OUT = ByoError(504, "upstream_timeout", "silent")
KEY_REJECTED = ByoError(502, "provider_auth_failed", "key rejected (401)")
BAD_REQUEST = ByoError(400, "invalid_request", "bad messages")
NO_SUCH_MODEL = ByoError(404, "model_not_found", "no such model")


class FakeTime:
    """A clock that only moves when the chain sleeps or an upstream call takes time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeUpstreams:
    """Answers each call from a script per provider: an error to raise, or None to succeed."""

    def __init__(
        self,
        time: FakeTime,
        script: dict[str, list[ByoError | None]],
        *,
        call_s: float = 0.01,
        start_then_fail: bool = False,
    ) -> None:
        self.time = time
        self.script = script
        self.call_s = call_s
        self.start_then_fail = start_then_fail
        self.calls: list[tuple[str, int]] = []
        self.started = False

    async def call(self, candidate: Candidate, attempt: int) -> None:
        self.calls.append((candidate.provider, attempt))
        self.time.now += self.call_s
        outcome = self.script[candidate.provider].pop(0)
        if self.start_then_fail:
            self.started = True
        if outcome is not None:
            raise outcome


def chain(time: FakeTime, max_retries: int = 1) -> FallbackChain:
    return FallbackChain(
        RetryPolicy(max_retries=max_retries),
        clock=time.clock,
        sleep=time.sleep,
        rng=random.Random(7),
    )


async def run(
    time: FakeTime,
    upstreams: FakeUpstreams,
    deadline: float = 5.0,
    max_retries: int = 1,
    candidates: list[Candidate] | None = None,
) -> Candidate:
    served = await chain(time, max_retries).run(
        candidates or [OPENAI, SELFHOSTED], deadline, upstreams.call, lambda: upstreams.started
    )
    assert served.attempts == len(upstreams.calls)
    return served.candidate


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (RATE_LIMITED, Verdict.RETRY),
        (SERVER_ERROR, Verdict.RETRY),
        (TIMED_OUT, Verdict.RETRY),
        (ByoError(502, "upstream_unreachable", "down"), Verdict.RETRY),
        (ByoError(502, "upstream_overloaded", "busy"), Verdict.RETRY),
        (KEY_REJECTED, Verdict.FALL_BACK),
        (ByoError(400, "upstream_not_allowed", "private"), Verdict.FALL_BACK),
        (BAD_REQUEST, Verdict.FINAL),
        (NO_SUCH_MODEL, Verdict.FINAL),
        (ByoError(413, "request_too_large", "big"), Verdict.FINAL),
    ],
)
def test_each_failure_is_retried_fallen_back_from_or_final(
    error: ByoError, verdict: Verdict
) -> None:
    assert classify(error) is verdict


def test_fallbacks_follow_priority_with_their_preferred_model_and_skip_unusable_ones() -> None:
    targets = {
        "anthropic": FallbackTarget("claude-3-5-haiku"),
        "openai": FallbackTarget("gpt-4o-mini"),
        "openrouter": FallbackTarget("meta/llama"),  # not callable by this router
        "selfhosted": FallbackTarget(None),  # no model chosen: nothing to ask it for
    }
    candidates = fallback_candidates(
        OPENAI, targets, {"openai", "anthropic", "selfhosted"}, fallback_to_default=True
    )
    assert candidates == [OPENAI, Candidate("anthropic", "claude-3-5-haiku")]


def test_a_provider_whose_key_was_rejected_is_no_fallback() -> None:
    targets = {"openai": FallbackTarget("gpt-4o"), "selfhosted": FallbackTarget("llama3", True)}
    assert fallback_candidates(
        OPENAI, targets, {"openai", "selfhosted"}, fallback_to_default=False
    ) == [OPENAI]


APP_DEFAULT = AppDefaultTarget("anthropic", "claude-3-5-haiku")


def test_the_app_default_comes_last_with_its_model_when_the_connection_allows_it() -> None:
    targets = {"openai": FallbackTarget("gpt-4o"), "selfhosted": FallbackTarget("llama3")}
    candidates = fallback_candidates(
        OPENAI,
        targets,
        {"openai", "selfhosted", "anthropic"},
        fallback_to_default=True,
        app_default=APP_DEFAULT,
    )
    assert candidates == [OPENAI, SELFHOSTED, Candidate("default", "claude-3-5-haiku")]


def test_the_app_default_is_no_fallback_when_the_connection_does_not_allow_it() -> None:
    assert fallback_candidates(
        OPENAI,
        {"openai": FallbackTarget("gpt-4o")},
        {"openai", "anthropic"},
        fallback_to_default=False,
        app_default=APP_DEFAULT,
    ) == [OPENAI]


@pytest.mark.parametrize(
    ("app_default", "supported"),
    [
        (None, {"openai", "anthropic"}),
        (AppDefaultTarget("anthropic", None), {"openai", "anthropic"}),  # no model to ask for
        (APP_DEFAULT, {"openai"}),  # a kind of provider this router cannot call
    ],
)
def test_an_unusable_app_default_is_no_fallback(
    app_default: AppDefaultTarget | None, supported: set[str]
) -> None:
    assert fallback_candidates(
        OPENAI,
        {"openai": FallbackTarget("gpt-4o")},
        supported,
        fallback_to_default=True,
        app_default=app_default,
    ) == [OPENAI]


def test_a_request_for_the_app_default_never_spends_a_users_key() -> None:
    requested = Candidate("default", "gpt-4o")
    assert fallback_candidates(
        requested,
        {"openai": FallbackTarget("gpt-4o")},
        {"openai", "anthropic"},
        fallback_to_default=True,
        app_default=APP_DEFAULT,
    ) == [requested]


async def test_the_app_default_answers_after_every_provider_failed() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(
        time, {"openai": [KEY_REJECTED], "selfhosted": [KEY_REJECTED], "default": [None]}
    )
    candidates = [OPENAI, SELFHOSTED, Candidate("default", "claude-3-5-haiku")]
    served = await chain(time).run(candidates, 30.0, upstreams.call, lambda: upstreams.started)
    assert served.candidate == Candidate("default", "claude-3-5-haiku")
    assert upstreams.calls == [("openai", 1), ("selfhosted", 2), ("default", 3)]


@pytest.mark.parametrize("error", [RATE_LIMITED, BUSY, SERVER_ERROR, TIMED_OUT])
async def test_a_retryable_failure_falls_back_at_once_without_waiting(error: ByoError) -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(time, {"openai": [error], "selfhosted": [None]})
    assert await run(time, upstreams) == SELFHOSTED
    # Asked once, and neither the Retry-After nor a backoff was waited before the next.
    assert upstreams.calls == [("openai", 1), ("selfhosted", 2)]
    assert time.slept == []


async def test_only_provider_rate_limited_is_retried_after_the_backoff() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(time, {"openai": [BUSY, None]})
    assert await run(time, upstreams, candidates=[OPENAI]) == OPENAI
    assert upstreams.calls == [("openai", 1), ("openai", 2)]
    # Full jitter: somewhere between nothing and the first backoff step.
    assert len(time.slept) == 1
    assert 0 <= time.slept[0] <= 0.25


async def test_retry_waits_what_the_providers_retry_after_says() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(time, {"openai": [RATE_LIMITED, None]})
    assert await run(time, upstreams, candidates=[OPENAI]) == OPENAI
    assert time.slept == [1.0]


async def test_when_the_fallback_fails_too_the_first_is_retried_after_its_backoff() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(
        time, {"openai": [SERVER_ERROR, None], "selfhosted": [SERVER_ERROR]}, call_s=0.01
    )
    assert await run(time, upstreams) == OPENAI
    assert upstreams.calls == [("openai", 1), ("selfhosted", 2), ("openai", 3)]
    assert len(time.slept) == 1
    assert 0 <= time.slept[0] <= 0.25


async def test_retry_after_counts_from_the_failure_not_from_the_fallbacks_end() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(
        time, {"openai": [RATE_LIMITED, None], "selfhosted": [KEY_REJECTED]}, call_s=0.3
    )
    assert await run(time, upstreams) == OPENAI
    # The fallback took 0.3 s of the provider's 1 s: the retry waits only the rest.
    assert time.slept == [pytest.approx(0.7)]
    assert upstreams.calls == [("openai", 1), ("selfhosted", 2), ("openai", 3)]


async def test_retry_after_past_the_deadline_is_not_waited_for() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(time, {"openai": [RATE_LIMITED]})
    with pytest.raises(ByoError) as raised:
        await run(time, upstreams, deadline=0.5, candidates=[OPENAI])
    assert raised.value is RATE_LIMITED
    assert time.slept == []


async def test_a_timeout_that_used_most_of_the_deadline_is_not_retried() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(
        time, {"openai": [TIMED_OUT], "selfhosted": [KEY_REJECTED]}, call_s=2.0
    )
    with pytest.raises(ByoError) as raised:
        await run(time, upstreams, deadline=5.0)
    assert raised.value is TIMED_OUT
    assert upstreams.calls == [("openai", 1), ("selfhosted", 2)]


async def test_a_stalled_upstream_is_not_asked_again_but_the_next_provider_is() -> None:
    # It has the request and may still be generating (and billing) it: a second call would
    # make two upstream calls for one request.
    time = FakeTime()
    stalled = StalledUpstream(504, "upstream_timeout", "no first token within 1s")
    upstreams = FakeUpstreams(time, {"openai": [stalled], "selfhosted": [None]}, call_s=1.0)
    assert await run(time, upstreams, deadline=60.0) == SELFHOSTED
    assert upstreams.calls == [("openai", 1), ("selfhosted", 2)]


async def test_a_stalled_upstream_is_not_asked_again_when_the_others_fail_too() -> None:
    time = FakeTime()
    stalled = StalledUpstream(504, "upstream_timeout", "no first token within 1s")
    upstreams = FakeUpstreams(
        time, {"openai": [stalled], "selfhosted": [SERVER_ERROR, SERVER_ERROR]}, call_s=1.0
    )
    with pytest.raises(ByoError) as raised:
        await run(time, upstreams, deadline=60.0)
    assert raised.value is stalled
    assert upstreams.calls == [("openai", 1), ("selfhosted", 2), ("selfhosted", 3)]


async def test_a_rejected_key_is_not_asked_again_when_the_others_fail_too() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(time, {"openai": [KEY_REJECTED], "selfhosted": [BUSY, None]})
    assert await run(time, upstreams) == SELFHOSTED
    assert upstreams.calls == [("openai", 1), ("selfhosted", 2), ("selfhosted", 3)]


async def test_rejected_key_falls_back_without_asking_that_provider_again() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(time, {"openai": [KEY_REJECTED], "selfhosted": [None]})
    seen: list[tuple[str, str]] = []

    async def observe(candidate: Candidate, error: ByoError) -> None:
        seen.append((candidate.provider, error.code))

    served = await chain(time).run(
        [OPENAI, SELFHOSTED], 5.0, upstreams.call, lambda: False, observe
    )
    assert served.candidate == SELFHOSTED
    assert served.attempts == 2
    assert seen == [("openai", "provider_auth_failed")]


@pytest.mark.parametrize("error", [BAD_REQUEST, NO_SUCH_MODEL])
async def test_the_requests_own_fault_never_falls_back(error: ByoError) -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(time, {"openai": [error], "selfhosted": [None]})
    with pytest.raises(ByoError) as raised:
        await run(time, upstreams)
    assert raised.value is error
    assert upstreams.calls == [("openai", 1)]


async def test_a_failure_after_the_answer_started_is_never_retried() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(
        time, {"openai": [SERVER_ERROR], "selfhosted": [None]}, start_then_fail=True
    )
    with pytest.raises(ByoError) as raised:
        await run(time, upstreams)
    assert raised.value is SERVER_ERROR
    assert upstreams.calls == [("openai", 1)]


async def test_when_everything_fails_the_app_sees_the_requested_providers_error() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(
        time, {"openai": [RATE_LIMITED, RATE_LIMITED], "selfhosted": [SERVER_ERROR, SERVER_ERROR]}
    )
    with pytest.raises(ByoError) as raised:
        await run(time, upstreams)
    assert raised.value is RATE_LIMITED
    # Each once, then each retried once (the first after its Retry-After).
    assert upstreams.calls == [("openai", 1), ("selfhosted", 2), ("openai", 3), ("selfhosted", 4)]


async def test_no_retries_configured_goes_straight_to_the_fallback() -> None:
    time = FakeTime()
    upstreams = FakeUpstreams(time, {"openai": [SERVER_ERROR], "selfhosted": [None]})
    assert await run(time, upstreams, max_retries=0) == SELFHOSTED
    assert upstreams.calls == [("openai", 1), ("selfhosted", 2)]


def test_backoff_grows_exponentially_up_to_its_cap() -> None:
    policy = RetryPolicy(max_retries=5, backoff_base_s=0.25, backoff_cap_s=2.0)
    rng = random.Random(1)
    for retry, ceiling in enumerate([0.25, 0.5, 1.0, 2.0, 2.0]):
        samples = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling / 2
