"""Which upstreams failed lately, so later requests skip them for a while instead of waiting.

An upstream here is one credential of one connection (or the app's own default key, shared by
every connection that falls back to it) asked for one model: LiteLLM's "deployment". After
`after_failures` retryable failures (429, 5xx, timeouts, unreachable) within `window_s`, or one
failure that carries a Retry-After, it cools down for `cooldown_s` (or the Retry-After, capped at
`max_cooldown_s`): requests put it behind every other candidate. When the time is up it is
half-open: the next request that may use it probes it first, others keep it last until that
probe ends; a success clears it, a failure cools it down again. A cooling upstream is only ever
moved back, never left out, so a flaky provider with nothing else beside it is still asked.

State is per router copy, in memory and bounded (`max_upstreams`): copies learn on their own,
and a restart forgets. Plain code with a clock, no bus and no HTTP.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from byorouter_common.errors import ByoError

log = logging.getLogger(__name__)

# The scope of the app's default provider: one operator key serves many connections and apps.
APP_DEFAULT_SCOPE: Final = "app default"

T = TypeVar("T")


def credential_fingerprint(*parts: str | None) -> str:
    """A short digest of a credential (key, base URL, tunnel) to tell two apart, never the key."""
    data = "\x00".join(part or "" for part in parts).encode()
    return hashlib.blake2b(data, digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class Upstream:
    """Whose failures count together: one credential of one scope, asked for one model."""

    kind: str  # the provider kind called (openai, anthropic, ...): the metrics label
    scope: str  # the connection id, or APP_DEFAULT_SCOPE
    credential: str = field(repr=False)  # credential_fingerprint(...)
    model: str


@dataclass(slots=True)
class _Cooling:
    until: float
    probing_since: float | None = None


class Cooldowns:
    """Recent failures and cooldowns of upstreams, on one clock (the loop's, like deadlines)."""

    def __init__(
        self,
        *,
        after_failures: int = 3,
        window_s: float = 30.0,
        cooldown_s: float = 15.0,
        max_cooldown_s: float = 60.0,
        max_upstreams: int = 10_000,
        on_start: Callable[[str], None] | None = None,
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        """`on_start`/`on_end` hear the provider kind when a cooldown starts, and when it is
        over (a success cleared it, or it was forgotten): the metrics."""
        self.after_failures = after_failures
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.max_upstreams = max_upstreams
        # Recent failure times of upstreams that have not succeeded since; oldest first.
        self._failures: OrderedDict[Upstream, deque[float]] = OrderedDict()
        self._cooling: OrderedDict[Upstream, _Cooling] = OrderedDict()
        # Cooldowns started, by provider kind (the Prometheus counter mirrors it).
        self.started: dict[str, int] = {}
        self._on_start = on_start
        self._on_end = on_end
        self._next_sweep = 0.0

    @property
    def enabled(self) -> bool:
        return self.after_failures > 0

    @property
    def tracking(self) -> bool:
        """Whether any upstream has failed lately (else a success has nothing to clear)."""
        return bool(self._failures) or bool(self._cooling)

    def any_cooling(self, now: float) -> bool:
        """Whether any upstream may need moving back: the hot path checks this and nothing more.

        Now and then it also forgets cooldowns that ended a window ago with nobody asking that
        upstream since (its next request is then an ordinary one, not a probe).
        """
        if not self._cooling:
            return False
        if now >= self._next_sweep:
            self._next_sweep = now + self.window_s
            stale = now - self.window_s
            for upstream in [
                u for u, c in self._cooling.items() if c.until < stale and c.probing_since is None
            ]:
                del self._cooling[upstream]
                self._ended(upstream)
        return bool(self._cooling)

    def __len__(self) -> int:
        """Cooldowns in force: cooling, or over and waiting for a success to clear them."""
        return len(self._cooling)

    def cooling_count(self, now: float) -> int:
        """How many upstreams are cooling down right now (not counting half-open ones)."""
        return sum(1 for cooling in self._cooling.values() if cooling.until > now)

    def is_cooling(self, upstream: Upstream, now: float) -> bool:
        cooling = self._cooling.get(upstream)
        return cooling is not None and cooling.until > now

    def arrange(
        self, candidates: Sequence[T], upstream_of: Callable[[T], Upstream], now: float
    ) -> tuple[list[T], list[Upstream]]:
        """The candidates with cooling ones moved last (in order), and the probes this claims.

        A candidate whose cooldown is over and that nobody is probing becomes this request's
        probe and keeps its place; the caller reports how it went (`succeeded`, `failed`) or
        `release`s it when it was not asked after all.
        """
        ready: list[T] = []
        cooling_last: list[T] = []
        probes: list[Upstream] = []
        for candidate in candidates:
            upstream = upstream_of(candidate)
            cooling = self._cooling.get(upstream)
            if cooling is None:
                ready.append(candidate)
            elif cooling.until > now or (
                cooling.probing_since is not None
                # A probe that never reported (a long stream) gives way after a cooldown's time.
                and now - cooling.probing_since < self.cooldown_s
            ):
                cooling_last.append(candidate)
            else:
                cooling.probing_since = now
                probes.append(upstream)
                ready.append(candidate)
        return ready + cooling_last, probes

    def release(self, probes: Sequence[Upstream]) -> None:
        """Probes claimed by `arrange` whose outcome is unknown: the next request may probe."""
        for upstream in probes:
            cooling = self._cooling.get(upstream)
            if cooling is not None:
                cooling.probing_since = None

    def succeeded(self, upstream: Upstream) -> None:
        """It answered: its failures are forgotten and a cooldown (or probe) ends."""
        self._failures.pop(upstream, None)
        if self._cooling.pop(upstream, None) is not None:
            self._ended(upstream)
            log.info(
                "provider cooldown over",
                extra={
                    "provider": upstream.kind,
                    "connection_id": _connection_of(upstream),
                    "model": upstream.model,
                },
            )

    def failed(self, upstream: Upstream, error: ByoError, now: float) -> None:
        """A retryable failure: counted, and it may start (or, for a probe, renew) a cooldown."""
        if not self.enabled:
            return
        cooling = self._cooling.get(upstream)
        if cooling is not None and cooling.until > now and cooling.probing_since is None:
            return  # already cooling (asked anyway, as nothing else answered): no news
        recent = self._failures.get(upstream)
        if recent is None:
            recent = self._failures[upstream] = deque(maxlen=self.after_failures)
            if len(self._failures) > self.max_upstreams:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(upstream)
        recent.append(now)
        while recent and recent[0] <= now - self.window_s:
            recent.popleft()
        if error.retry_after is not None and error.retry_after > 0:
            self._cool(upstream, min(error.retry_after, self.max_cooldown_s), now, error)
        elif cooling is not None or len(recent) >= self.after_failures:
            # A failed probe cools down again at once; others after enough failures.
            self._cool(upstream, self.cooldown_s, now, error)

    def _cool(self, upstream: Upstream, seconds: float, now: float, error: ByoError) -> None:
        self._failures.pop(upstream, None)
        renewed = upstream in self._cooling
        self._cooling[upstream] = _Cooling(now + seconds)
        self._cooling.move_to_end(upstream)
        if len(self._cooling) > self.max_upstreams:
            self._ended(self._cooling.popitem(last=False)[0])
        if not renewed:
            self.started[upstream.kind] = self.started.get(upstream.kind, 0) + 1
            if self._on_start is not None:
                self._on_start(upstream.kind)
        log.warning(
            "provider cooling down" if not renewed else "provider still failing; cooling down",
            extra={
                "provider": upstream.kind,
                "connection_id": _connection_of(upstream),
                "model": upstream.model,
                "cooldown_s": round(seconds, 3),
                "error_code": error.code,
            },
        )

    def _ended(self, upstream: Upstream) -> None:
        if self._on_end is not None:
            self._on_end(upstream.kind)


def _connection_of(upstream: Upstream) -> str | None:
    return None if upstream.scope == APP_DEFAULT_SCOPE else upstream.scope
