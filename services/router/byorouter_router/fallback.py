"""Which providers a request may try, in what order, and when a failure is retried or moved on.

Plain code with no bus and no HTTP, so the policy is tested on its own: `fallback_candidates`
orders the targets, `classify` reads a provider's failure, `RetryPolicy` decides whether (and how
long) to wait before trying the same provider again, and `FallbackChain` runs the attempts:
every candidate once without waiting, then the retryable ones again after their backoff.

A failure is only ever retried or fallen back from before the answer has started: once a provider
has begun answering, the client may already hold part of it, so its failure is the client's.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final

from byorouter_common.errors import ByoError
from byorouter_router.cooldowns import Cooldowns, Upstream
from byorouter_router.providers.errors import StalledUpstream

# Set when the provider did not accept the request at all; the connection's own set-up is at
# fault, not the request, so another provider may well answer.
_MISCONFIGURED: Final = frozenset(
    {
        "provider_misconfigured",
        "upstream_not_allowed",
        "provider_not_supported",
        # The app's provider policy no longer allows it; another of the user's providers may do.
        "provider_not_allowed",
    }
)
# No tunnel client is connected: asking again in a moment rarely helps; the next provider may.
_OFFLINE: Final = frozenset({"tunnel_offline"})
# The provider rejected the user's key: asking it again gives the same answer.
KEY_REJECTED: Final = "provider_auth_failed"
# The name the app's own default provider goes by in model ids, headers and usage.
APP_DEFAULT: Final = "default"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider and the model to ask it for."""

    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class FallbackTarget:
    """What the chain needs to know of a connection's provider to fall back to it."""

    preferred_model: str | None
    failing: bool = False


@dataclass(frozen=True, slots=True)
class AppDefaultTarget:
    """The app's own default provider: which kind of provider it is and its configured model."""

    kind: str
    model: str | None


def app_default_candidate(
    app_default: AppDefaultTarget | None, supported: Collection[str]
) -> Candidate | None:
    """The app's own default provider with its configured model, to try last.

    None when the app has none, the operator set no model (a fallback must know what to ask
    for) or the router cannot call its kind of provider.
    """
    if app_default is None or not app_default.model or app_default.kind not in supported:
        return None
    return Candidate(APP_DEFAULT, app_default.model)


def fallback_candidates(
    requested: Candidate,
    targets: Mapping[str, FallbackTarget],
    supported: Collection[str],
    *,
    fallback_to_default: bool,
    app_default: AppDefaultTarget | None = None,
) -> list[Candidate]:
    """The requested provider and model first, then every usable fallback, best priority first.

    `targets` is the connection's providers in priority order. A fallback is usable when the
    router can call it, the user chose a model for it (`preferred_model`), and its key was not
    rejected the last time it was used. The app's default comes last, and only when the
    connection allows it (`fallback_to_default`).

    A request for the app's default itself (`default/...`) has no fallbacks: the app chose to
    pay for it, and a user's key is never spent on a request the app addressed to its own.
    """
    candidates = [requested]
    if requested.provider == APP_DEFAULT:
        return candidates
    for provider, target in targets.items():
        if (
            provider == requested.provider
            or provider not in supported
            or not target.preferred_model
            or target.failing
        ):
            continue
        candidates.append(Candidate(provider, target.preferred_model))
    if fallback_to_default:
        default = app_default_candidate(app_default, supported)
        if default is not None:
            candidates.append(default)
    return candidates


class Verdict(enum.Enum):
    RETRY = "retry"  # worth asking the same provider again, then others
    FALL_BACK = "fall back"  # the same provider will not do better; try the next one
    FINAL = "final"  # the request itself is at fault: no provider will do better


def classify(error: ByoError) -> Verdict:
    """What a provider's failure (before its answer started) means for the rest of the request."""
    if error.code == KEY_REJECTED or error.code in _MISCONFIGURED or error.code in _OFFLINE:
        return Verdict.FALL_BACK
    if isinstance(error, StalledUpstream):
        return Verdict.FALL_BACK
    if error.status == 429 or error.status >= 500:
        return Verdict.RETRY
    # 400 (the request), 404 (no such model), 413 (too large): the request's own fault.
    return Verdict.FINAL


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one provider is asked again."""

    max_retries: int = 1
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 2.0

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with full jitter: anywhere up to base * 2^retry, capped."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * (2**retry))
        return (rng or random).uniform(0.0, ceiling)

    def wait_before_retry(
        self,
        error: ByoError,
        retry: int,
        *,
        now: float,
        deadline: float,
        attempt_s: float,
        rng: random.Random | None = None,
        since_failure: float = 0.0,
    ) -> float | None:
        """Seconds still to wait before retry number `retry` (0-based), or None not to retry.

        The provider's Retry-After wins over our backoff; both count from the failure, which
        was `since_failure` seconds ago. A retry must fit before the deadline with time for an
        attempt as long as the one that failed: a provider that took the whole read timeout to
        fail would otherwise eat the time the rest of the request needs.
        """
        if retry >= self.max_retries:
            return None
        wait = error.retry_after if error.retry_after is not None else self.backoff(retry, rng)
        wait = max(0.0, wait - since_failure)
        if now + wait + attempt_s >= deadline:
            return None
        return wait


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Served:
    """Who answered, and how many upstream calls it took."""

    candidate: Candidate
    attempts: int


class FallbackChain:
    """Tries each candidate once, in order, then retries the retryable ones within the policy.

    `call(candidate, attempt)` makes upstream call number `attempt` (1-based, counted over the
    whole request) and raises `ByoError` on failure; `started()` says whether the answer of the
    call in progress has begun reaching the client, after which nothing is retried. `observe` sees
    every failure before it is retried or fallen back from (to report a rejected key).

    A retryable failure (429, 5xx, timeout) moves on to the next candidate at once: waiting out a
    backoff while another provider could answer only makes the app wait. Only when every other
    candidate failed too are the retryable ones asked again, in order, each after its Retry-After
    or backoff (counted from its failure, so time spent on the others is not waited twice).

    With `cooldowns` and an `upstream_of` for the request, upstreams that failed repeatedly are
    tried after the rest (`cooldowns.py`), and every outcome is reported to them.

    When every candidate fails, the requested provider's last error is raised: a fallback is
    there to improve on it, and the app asked for that provider.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        cooldowns: Cooldowns | None = None,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._cooldowns = cooldowns if cooldowns is not None and cooldowns.enabled else None

    async def run(
        self,
        candidates: list[Candidate],
        deadline: float,
        call: Callable[[Candidate, int], Awaitable[None]],
        started: Callable[[], bool],
        observe: Callable[[Candidate, ByoError], Awaitable[None]] | None = None,
        upstream_of: Callable[[Candidate], Upstream] | None = None,
    ) -> Served:
        attempt = _Attempt(
            call,
            started,
            observe,
            self._clock,
            self._cooldowns if upstream_of is not None else None,
            upstream_of,
        )
        requested = candidates[0]
        order = candidates
        probes: list[Upstream] = []
        cooldowns = attempt.cooldowns
        if cooldowns is not None and cooldowns.any_cooling(now := self._clock()):
            assert upstream_of is not None
            order, probes = cooldowns.arrange(candidates, upstream_of, now)
        requested_error: ByoError | None = None
        last_error: ByoError | None = None
        retryable: list[_Failure] = []
        try:
            # First pass: each candidate once, moving on at once from any failure.
            for candidate in order:
                if attempt.count and self._clock() >= deadline:
                    break
                failure = await attempt.make(candidate)
                if failure is None:
                    return Served(candidate, attempt.count)
                last_error = failure.error
                if candidate == requested:
                    requested_error = failure.error
                    if failure.verdict is Verdict.FINAL:
                        raise failure.error
                if failure.verdict is Verdict.RETRY:
                    retryable.append(failure)
            # Nothing else answered: the retryable ones again, each as patiently as the policy says.
            for failure in retryable:
                retry = 0
                while failure.verdict is Verdict.RETRY:
                    now = self._clock()
                    wait = self._policy.wait_before_retry(
                        failure.error,
                        retry,
                        now=now,
                        deadline=deadline,
                        attempt_s=failure.failed_at - failure.began,
                        rng=self._rng,
                        since_failure=now - failure.failed_at,
                    )
                    if wait is None:
                        break
                    retry += 1
                    if wait > 0:
                        await self._sleep(wait)
                    candidate = failure.candidate
                    again = await attempt.make(candidate)
                    if again is None:
                        return Served(candidate, attempt.count)
                    failure = again
                    last_error = failure.error
                    if candidate == requested:
                        requested_error = failure.error
                        if failure.verdict is Verdict.FINAL:
                            raise failure.error
            error = requested_error or last_error
            assert error is not None
            raise error
        finally:
            if probes:
                assert cooldowns is not None
                cooldowns.release(probes)


@dataclass(frozen=True, slots=True)
class _Failure:
    candidate: Candidate
    error: ByoError
    verdict: Verdict
    began: float
    failed_at: float


class _Attempt:
    """One upstream call of a request: counted, classified, and reported to the cooldowns."""

    def __init__(
        self,
        call: Callable[[Candidate, int], Awaitable[None]],
        started: Callable[[], bool],
        observe: Callable[[Candidate, ByoError], Awaitable[None]] | None,
        clock: Clock,
        cooldowns: Cooldowns | None,
        upstream_of: Callable[[Candidate], Upstream] | None,
    ) -> None:
        self._call = call
        self._started = started
        self._observe = observe
        self._clock = clock
        self.cooldowns = cooldowns
        self._upstream_of = upstream_of
        self.count = 0

    async def make(self, candidate: Candidate) -> _Failure | None:
        """None when it answered; its failure when it failed before the answer started."""
        self.count += 1
        began = self._clock()
        try:
            await self._call(candidate, self.count)
        except ByoError as error:
            if self._started():
                # It answered, then broke: the client's failure now, and no sign of ill health.
                self._succeeded(candidate)
                raise
            if self._observe is not None:
                await self._observe(candidate, error)
            verdict = classify(error)
            failed_at = self._clock()
            if self.cooldowns is not None and counts_against_health(error, verdict):
                assert self._upstream_of is not None
                self.cooldowns.failed(self._upstream_of(candidate), error, failed_at)
            return _Failure(candidate, error, verdict, began, failed_at)
        self._succeeded(candidate)
        return None

    def _succeeded(self, candidate: Candidate) -> None:
        if self.cooldowns is not None and self.cooldowns.tracking:
            assert self._upstream_of is not None
            self.cooldowns.succeeded(self._upstream_of(candidate))


def counts_against_health(error: ByoError, verdict: Verdict) -> bool:
    """A failure that says the upstream is struggling: retryable ones, and a stalled answer."""
    return verdict is Verdict.RETRY or isinstance(error, StalledUpstream)
