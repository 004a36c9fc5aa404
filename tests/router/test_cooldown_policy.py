"""Cooldowns on their own and inside `FallbackChain`: no bus, no HTTP, a fake clock."""

from __future__ import annotations

import random

import pytest

from byorouter_common.errors import ByoError
from byorouter_router.cooldowns import Cooldowns, Upstream
from byorouter_router.fallback import Candidate, FallbackChain, RetryPolicy
from byorouter_router.providers.errors import StalledUpstream
from tests.router.test_fallback_policy import (
    BAD_REQUEST,
    BUSY,
    KEY_REJECTED,
    OPENAI,
    RATE_LIMITED,
    SELFHOSTED,
    SERVER_ERROR,
    FakeTime,
    FakeUpstreams,
)


def upstream_of(candidate: Candidate) -> Upstream:
    return Upstream(candidate.provider, "conn_1", "fp", candidate.model)


class Requests:
    """Requests through one chain with cooldowns, as one router copy serves them."""

    def __init__(
        self,
        *,
        after_failures: int = 3,
        window_s: float = 30.0,
        cooldown_s: float = 10.0,
        max_cooldown_s: float = 60.0,
    ) -> None:
        self.time = FakeTime()
        self.ended: list[str] = []
        self.started: list[str] = []
        self.cooldowns = Cooldowns(
            after_failures=after_failures,
            window_s=window_s,
            cooldown_s=cooldown_s,
            max_cooldown_s=max_cooldown_s,
            on_start=self.started.append,
            on_end=self.ended.append,
        )
        self.chain = FallbackChain(
            RetryPolicy(),
            clock=self.time.clock,
            sleep=self.time.sleep,
            rng=random.Random(3),
            cooldowns=self.cooldowns,
        )

    async def send(
        self, script: dict[str, list[ByoError | None]], candidates: list[Candidate] | None = None
    ) -> tuple[list[str], Candidate | ByoError]:
        """Which providers one request asked, in order, and who served (or what it raised)."""
        upstreams = FakeUpstreams(self.time, script)
        try:
            served = await self.chain.run(
                candidates or [OPENAI, SELFHOSTED],
                self.time.now + 30.0,
                upstreams.call,
                lambda: False,
                upstream_of=upstream_of,
            )
        except ByoError as error:
            return [p for p, _ in upstreams.calls], error
        return [p for p, _ in upstreams.calls], served.candidate

    def cooling(self, candidate: Candidate) -> bool:
        return self.cooldowns.is_cooling(upstream_of(candidate), self.time.now)


async def cool_openai(requests: Requests) -> None:
    for _ in range(3):
        assert await requests.send({"openai": [SERVER_ERROR], "selfhosted": [None]}) == (
            ["openai", "selfhosted"],
            SELFHOSTED,
        )
    assert requests.cooling(OPENAI)


async def test_three_failures_within_the_window_cool_a_provider_down_and_it_is_skipped() -> None:
    requests = Requests()
    await cool_openai(requests)
    assert await requests.send({"openai": [], "selfhosted": [None]}) == (["selfhosted"], SELFHOSTED)
    assert requests.started == ["openai"]
    assert requests.cooldowns.started == {"openai": 1}


async def test_failures_further_apart_than_the_window_never_cool_it_down() -> None:
    requests = Requests(window_s=30.0)
    for _ in range(5):
        await requests.send({"openai": [BUSY], "selfhosted": [None]})
        requests.time.now += 16.0  # at most two failures in any 30 s
    assert not requests.cooling(OPENAI)


async def test_a_success_forgets_earlier_failures() -> None:
    requests = Requests()
    for script in ([SERVER_ERROR], [SERVER_ERROR], [None], [SERVER_ERROR], [SERVER_ERROR]):
        await requests.send({"openai": script, "selfhosted": [None]})
    assert not requests.cooling(OPENAI)


async def test_one_429_with_retry_after_cools_down_for_that_long_capped() -> None:
    requests = Requests(max_cooldown_s=60.0)
    long_wait = ByoError(429, "upstream_rate_limited", "slow down", retry_after=3600.0)
    await requests.send({"openai": [long_wait], "selfhosted": [None]})
    assert requests.cooling(OPENAI)
    requests.time.now += 59.0
    assert requests.cooling(OPENAI)
    requests.time.now += 1.5
    assert not requests.cooling(OPENAI)

    short = Requests()
    await short.send({"openai": [RATE_LIMITED], "selfhosted": [None]})  # retry-after: 1
    assert short.cooling(OPENAI)
    short.time.now += 1.0
    assert not short.cooling(OPENAI)


@pytest.mark.parametrize("error", [KEY_REJECTED, BAD_REQUEST])
async def test_failures_that_are_no_sign_of_ill_health_never_cool_down(error: ByoError) -> None:
    requests = Requests()
    for _ in range(4):
        await requests.send({"openai": [error], "selfhosted": [None]}, [SELFHOSTED, OPENAI])
    assert not requests.cooling(OPENAI)


async def test_stalled_answers_count_as_failures() -> None:
    requests = Requests()
    for _ in range(3):
        stalled = StalledUpstream(504, "upstream_timeout", "no first token")
        await requests.send({"openai": [stalled], "selfhosted": [None]})
    assert requests.cooling(OPENAI)


async def test_after_the_cooldown_one_request_probes_and_its_success_clears_it() -> None:
    requests = Requests(cooldown_s=10.0)
    await cool_openai(requests)
    requests.time.now += 10.0
    # Half-open: this request claims the probe; another arriving meanwhile keeps openai last.
    order, probes = requests.cooldowns.arrange([OPENAI, SELFHOSTED], upstream_of, requests.time.now)
    assert order == [OPENAI, SELFHOSTED]
    other, _ = requests.cooldowns.arrange([OPENAI, SELFHOSTED], upstream_of, requests.time.now)
    assert other == [SELFHOSTED, OPENAI]
    requests.cooldowns.release(probes)

    assert await requests.send({"openai": [None], "selfhosted": []}) == (["openai"], OPENAI)
    assert requests.ended == ["openai"]
    assert len(requests.cooldowns) == 0
    # Cleared, not merely over: one more failure does not cool it down again.
    await requests.send({"openai": [SERVER_ERROR], "selfhosted": [None]})
    assert not requests.cooling(OPENAI)


async def test_a_failed_probe_cools_it_down_again_at_once() -> None:
    requests = Requests(cooldown_s=10.0)
    await cool_openai(requests)
    requests.time.now += 10.0
    asked, _ = await requests.send({"openai": [BUSY], "selfhosted": [None]})
    assert asked == ["openai", "selfhosted"]
    assert requests.cooling(OPENAI)
    assert requests.started == ["openai"]  # renewed, not a second cooldown
    assert await requests.send({"openai": [], "selfhosted": [None]}) == (["selfhosted"], SELFHOSTED)


async def test_a_probe_that_was_not_needed_is_released_for_the_next_request() -> None:
    requests = Requests(cooldown_s=10.0)
    await cool_openai(requests)
    requests.time.now += 10.0
    # Asked for selfhosted first: it serves, and openai's probe was never made.
    assert await requests.send({"selfhosted": [None]}, [SELFHOSTED, OPENAI]) == (
        ["selfhosted"],
        SELFHOSTED,
    )
    order, _ = requests.cooldowns.arrange([OPENAI, SELFHOSTED], upstream_of, requests.time.now)
    assert order == [OPENAI, SELFHOSTED]


async def test_when_every_candidate_is_cooling_down_they_are_tried_in_order() -> None:
    requests = Requests()
    for _ in range(2):
        await requests.send({"openai": [BUSY, BUSY], "selfhosted": [BUSY, BUSY]})
    assert requests.cooling(OPENAI)
    assert requests.cooling(SELFHOSTED)
    asked, served = await requests.send({"openai": [SERVER_ERROR, None], "selfhosted": [BUSY]})
    # Each once, then the retry: a flaky provider still answers, and that clears it.
    assert (asked, served) == (["openai", "selfhosted", "openai"], OPENAI)
    assert not requests.cooling(OPENAI)


async def test_a_cooling_requested_provider_is_still_asked_after_the_fallbacks_fail() -> None:
    requests = Requests()
    await cool_openai(requests)
    asked, served = await requests.send({"openai": [None], "selfhosted": [KEY_REJECTED]})
    assert (asked, served) == (["selfhosted", "openai"], OPENAI)


async def test_a_lone_provider_cooling_down_is_still_asked() -> None:
    # Embeddings never fall back: their only candidate is asked, cooling or not.
    requests = Requests()
    for _ in range(3):
        await requests.send({"openai": [SERVER_ERROR, SERVER_ERROR]}, [OPENAI])
    assert requests.cooling(OPENAI)
    assert await requests.send({"openai": [None]}, [OPENAI]) == (["openai"], OPENAI)


async def test_no_cooldowns_when_turned_off() -> None:
    requests = Requests(after_failures=0)
    for _ in range(5):
        await requests.send({"openai": [SERVER_ERROR], "selfhosted": [None]})
    assert not requests.cooling(OPENAI)
    assert await requests.send({"openai": [None]}) == (["openai"], OPENAI)


def test_the_state_is_bounded() -> None:
    ended: list[str] = []
    cooldowns = Cooldowns(after_failures=1, max_upstreams=100, on_end=ended.append)
    for n in range(1000):
        cooldowns.failed(Upstream("openai", f"conn_{n}", "fp", "gpt-4o"), SERVER_ERROR, 0.0)
    assert len(cooldowns) == 100
    assert cooldowns.cooling_count(0.0) == 100
    assert len(ended) == 900  # every forgotten one ended, so the gauge comes back down


def test_cooldowns_long_over_are_forgotten() -> None:
    cooldowns = Cooldowns(after_failures=1, cooldown_s=10.0, window_s=30.0)
    cooldowns.failed(Upstream("openai", "conn_1", "fp", "gpt-4o"), SERVER_ERROR, 0.0)
    assert cooldowns.any_cooling(5.0)
    assert not cooldowns.any_cooling(45.0)
    assert len(cooldowns) == 0
