"""The reconnect schedule: fast first retries, full jitter under a doubling ceiling, a cap, and a
fresh start after a connection that stayed up."""

from __future__ import annotations

import random

from byorouter_tunnel_client.backoff import Backoff


class Ceiling(random.Random):
    """Always the top of the range, so the schedule's ceilings are visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_first_three_retries_wait_at_most_a_quarter_second() -> None:
    backoff = Backoff(rng=Ceiling())
    assert [backoff.next_delay() for _ in range(3)] == [0.25, 0.25, 0.25]


def test_later_retries_double_from_one_second_up_to_the_cap() -> None:
    backoff = Backoff(rng=Ceiling())
    delays = [backoff.next_delay() for _ in range(12)][3:]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_delays_are_full_jitter_between_zero_and_the_ceiling() -> None:
    backoff = Backoff(rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0 <= d <= 0.25 for d in delays[:3])
    assert all(0 <= d <= 60 for d in delays)
    assert len(set(delays)) == len(delays)  # jittered, not a fixed ladder
    assert min(delays[20:]) < 30 < max(delays[20:])


def test_a_long_outage_never_overflows() -> None:
    backoff = Backoff(rng=Ceiling())
    backoff.attempt = 10_000
    assert backoff.next_delay() == 60


def test_a_stable_connection_resets_the_schedule_but_a_short_one_does_not() -> None:
    backoff = Backoff(rng=Ceiling())
    for _ in range(6):
        backoff.next_delay()
    backoff.connection_lasted(5.0)
    assert backoff.next_delay() == 8
    backoff.connection_lasted(60.0)
    assert backoff.next_delay() == 0.25
