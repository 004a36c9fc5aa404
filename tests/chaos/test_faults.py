"""Faults under steady load from the `openai` SDK: every app gets a complete answer or a clear
OpenAI-shaped error within a bounded time, never `[DONE]` after a truncated answer, no request
reaches the upstream twice, and afterwards the stack serves again with nobody restarting
anything by hand (the restart policy `byorouter dev` uses brings killed processes back).

Each test prints what its fault looked like to the apps; docs/operations.md quotes them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import openai
import orjson
import pytest

from byorouter_cli.dev.demo import TUNNEL_CLIENT
from byorouter_cli.dev.stack import Stack
from tests.chaos.conftest import recorded_requests, usage_totals, wait_for_copies
from tests.chaos.load import (
    CLEAR_ERROR,
    COMPLETE,
    PROMPT,
    Figures,
    Load,
    Outcome,
    Target,
    figures,
    is_openai_error,
    served_twice,
    wait_serving,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

FIGURES: list[str] = []


async def under_load(
    stack: Stack,
    target: Target,
    name: str,
    fault: Callable[[], None],
    *,
    after_s: float = 6.0,
    load: Load | None = None,
) -> Figures:
    """Run the load, inject `fault` (blocking, in a thread) after it settled, keep the load on
    for `after_s`, then check every outcome and that the stack serves again."""
    load = load or Load(target)
    load.start()
    try:
        await asyncio.sleep(1.5)
        fault_at = time.monotonic()
        await asyncio.to_thread(fault)
        await asyncio.sleep(after_s)
    finally:
        outcomes = await load.stop()
    found = figures(name, outcomes, fault_at)
    serving_again = await wait_serving(target, 30, lambda o: o.kind == COMPLETE, outcomes)
    line = f"{found.line()}; a new request completes {serving_again:.1f} s after the load"
    FIGURES.append(line)
    print("\nCHAOS " + line)
    assert found.violations == [], found.violations[:5]
    assert served_twice(await recorded_requests(stack), [o.tag for o in outcomes]) == []
    assert found.complete > 0
    return found


async def assert_usage_matches(
    stack: Stack, target: Target, outcomes: list[Outcome], *, lost_with_the_router: bool = False
) -> None:
    """Recorded usage is what was served: every request the upstream received is counted once,
    and every answer an app got whole is counted whole.

    A request the upstream answered counts even when the bus lost its end on the way to the
    app (the app got a clear error): the provider served, and bills, all of it. Only a router
    killed while holding a request takes that request's count with it.
    """
    tags = {o.tag for o in outcomes}
    served = len({r["tag"] for r in await recorded_requests(stack)} & tags)
    complete = sum(o.kind == COMPLETE for o in outcomes)
    # Long enough for a report JetStream delivered but never saw acknowledged to come again.
    deadline = time.monotonic() + 60
    while True:
        requests, partial, tokens = await usage_totals(target)
        counted = requests == served or (lost_with_the_router and complete <= requests < served)
        if counted and requests - partial >= complete:
            break
        assert time.monotonic() < deadline, (
            f"usage counts {requests} requests ({partial} partial); the upstream served {served}, "
            f"{complete} of them whole to the app"
        )
        await asyncio.sleep(0.5)
    # The fake answers every complete request with one completion token per word.
    assert tokens >= complete * len(PROMPT.split())


def kill(stack: Stack, name: str) -> Callable[[], None]:
    def fault() -> None:
        os.kill(stack.pids()[name], signal.SIGKILL)

    return fault


async def test_steady_load_without_a_fault_completes_every_request(
    chaos_stack: Stack, target: Target
) -> None:
    found = await under_load(chaos_stack, target, "no fault", lambda: None, after_s=3)
    assert found.complete == found.requests
    await assert_usage_matches(chaos_stack, target, found.outcomes)


async def test_a_router_copy_killed_mid_stream(chaos_stack: Stack, target: Target) -> None:
    found = await under_load(chaos_stack, target, "router copy killed", kill(chaos_stack, "router"))
    # Only what the killed copy held fails, each within the gateway's idle limit.
    assert found.error_window_s < 3.0 + 3.0
    await wait_for_copies(chaos_stack, {"router": 2})
    assert chaos_stack.restarts("router") >= 1
    await assert_usage_matches(chaos_stack, target, found.outcomes, lost_with_the_router=True)


async def test_a_keystore_copy_killed(chaos_stack: Stack, target: Target) -> None:
    found = await under_load(
        chaos_stack, target, "keystore copy killed", kill(chaos_stack, "keystore")
    )
    await assert_usage_matches(chaos_stack, target, found.outcomes)
    await wait_for_copies(chaos_stack, {"keystore": 2})


async def test_nats_restarted(chaos_stack: Stack, target: Target) -> None:
    found = await under_load(
        chaos_stack, target, "NATS restarted (down 1 s)", lambda: chaos_stack.restart_nats(1.0)
    )
    assert found.error_window_s < 10
    await assert_usage_matches(chaos_stack, target, found.outcomes)


async def test_postgres_restarted(chaos_stack: Stack, target: Target) -> None:
    def restart() -> None:
        chaos_stack.stop_postgres()
        time.sleep(2.0)
        chaos_stack.start_postgres()

    found = await under_load(
        chaos_stack, target, "PostgreSQL restarted (down 2 s)", restart, after_s=8
    )
    # Usage finished while the database was down waits in JetStream and is recorded after.
    await assert_usage_matches(chaos_stack, target, found.outcomes)


async def test_upstream_cut_mid_stream(chaos_stack: Stack, target: Target) -> None:
    cut = Load(target, stream_model="openai/cut-after-5", workers=2)
    cut.start()
    try:
        found = await under_load(chaos_stack, target, "upstream cut mid-stream", lambda: None)
    finally:
        outcomes = await cut.stop()
    streamed_cuts = [o for o in outcomes if o.streamed]
    assert streamed_cuts
    assert all(o.kind == CLEAR_ERROR for o in streamed_cuts), streamed_cuts[:3]
    assert {o.code for o in streamed_cuts} == {"upstream_error"}
    assert found.complete == found.requests, "other requests are not disturbed"
    # A cut stream is billed as partial: what it delivered.
    await assert_usage_matches(chaos_stack, target, found.outcomes + outcomes)


async def stream_lines(target: Target, model: str) -> tuple[int, list[str], float]:
    """A streamed request read raw: its HTTP status, every line (comments too), seconds taken."""
    began = time.monotonic()
    client = target.client(30)
    try:
        async with client.chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": "a b c d e f"}], stream=True
        ) as response:
            lines = [line async for line in response.iter_lines() if line]
            return response.http_response.status_code, lines, time.monotonic() - began
    except openai.APIStatusError as exc:
        return exc.status_code, [exc.response.text], time.monotonic() - began
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("model", "status", "message", "limit_s"),
    [
        ("stall-after-3", 200, "did not send anything more of its answer for 2.5s", 2.5),
        ("stall-after-0", 200, "did not start its answer within 4s", 4.0),
        ("comments-200", 200, "did not start its answer within 4s", 4.0),
        ("hang", 504, "did not start its answer within 4s", 4.0),
    ],
)
async def test_a_stalled_upstream_ends_in_a_clear_error_within_its_limit(
    target: Target, model: str, status: int, message: str, limit_s: float
) -> None:
    code, lines, took = await stream_lines(target, f"openai/{model}")
    FIGURES.append(f"stalled upstream ({model}): HTTP {code} after {took:.1f} s")
    print(f"\nCHAOS stalled upstream ({model}): HTTP {code}, error after {took:.1f} s")
    assert code == status
    assert "data: [DONE]" not in lines
    last = orjson.loads(lines[-1].removeprefix("data: "))
    assert is_openai_error(last), last
    assert (last["error"]["code"], last["error"]["message"]) == (
        "upstream_timeout",
        f"The openai provider {message}.",
    )
    assert limit_s - 0.2 < took < limit_s + 1.5
    if status == 200:
        # While the upstream says nothing the client still hears the stream is alive.
        assert ": keep-alive" in lines


def tunnel_load(target: Target) -> Load:
    return Load(target, stream_model="selfhosted/drip-40", plain_model="selfhosted/slow-300")


async def test_the_tunnel_client_killed(chaos_stack: Stack, tunnel_target: Target) -> None:
    await under_load(
        chaos_stack,
        tunnel_target,
        "tunnel client killed",
        kill(chaos_stack, TUNNEL_CLIENT),
        load=tunnel_load(tunnel_target),
    )


async def test_the_tunnel_service_killed(chaos_stack: Stack, tunnel_target: Target) -> None:
    await under_load(
        chaos_stack,
        tunnel_target,
        "tunnel service killed",
        kill(chaos_stack, "tunnel"),
        load=tunnel_load(tunnel_target),
        after_s=8,
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_a_slow_reading_client_neither_stalls_others_nor_is_buffered_without_bound(
    chaos_stack: Stack, target: Target
) -> None:
    # About 2 MiB in 20 chunks, read one chunk a second.
    gateway = chaos_stack.pids()["gateway"]
    before = rss_mib(gateway)
    client = target.client(120)
    read: list[str] = []
    peak = before
    slow_tag = f"slow-reader-{time.monotonic_ns()}"

    async def slow_reader() -> None:
        nonlocal peak
        async with client.chat.completions.with_streaming_response.create(
            model="openai/repeat-30000",
            messages=[{"role": "user", "content": "seventy bytes of prompt " * 3}],
            stream=True,
            user=slow_tag,
        ) as response:
            async for line in response.iter_lines():
                if line.startswith("data: "):
                    read.append(line)
                    peak = max(peak, rss_mib(gateway))
                    await asyncio.sleep(1.0)

    reader = asyncio.create_task(slow_reader())
    try:
        found = await under_load(
            chaos_stack, target, "one client reading 1 chunk/s", lambda: None, after_s=8
        )
        await asyncio.wait_for(reader, 60)
    finally:
        reader.cancel()
        await client.close()
    line = f"slow reader: gateway RSS {before:.0f} MiB before, {peak:.0f} MiB at most while it read"
    FIGURES.append(line)
    print("\nCHAOS " + line)
    assert read[-1] == "data: [DONE]"
    assert found.complete == found.requests
    assert found.slowest_s < 3.0, "the others are not held up behind the slow reader"
    assert peak - before < 64
    slow = Outcome(slow_tag, True, COMPLETE, 0.0, 0.0, status=200)
    await assert_usage_matches(chaos_stack, target, [*found.outcomes, slow])
