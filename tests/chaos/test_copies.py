"""Two copies of every service on a three-node NATS cluster, run the way `byorouter dev
--copies 2 --nats-cluster 3` runs them: one copy of each service and one NATS node killed under
load from the `openai` SDK, and a gateway copy told to stop while it streams.

What an app may see: a request in flight on the killed process fails, each with a clear error
(OpenAI's error shape, or the connection dropping without `[DONE]`); a request started after a
kill is served by the surviving copy; nothing hangs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from byorouter_cli.dev.admin_bus import run_sync
from byorouter_cli.dev.processes import RestartPolicy
from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from tests.chaos.conftest import (
    ROUTER_ENV,
    STREAM_IDLE_S,
    recorded_requests,
    wait_for_copies,
)
from tests.chaos.load import (
    COMPLETE,
    UNCLEAR,
    VIOLATIONS,
    Load,
    Outcome,
    Target,
    served_twice,
    wait_serving,
)
from tests.chaos.test_faults import assert_usage_matches
from tests.e2e.conftest import create_app_with_connection

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

COPIES = 2
SERVICES = ("gateway", "router", "keystore", "connect", "tunnel")
# Long enough for the watchdog to bring a killed copy back and a client to move NATS nodes.
SETTLE_S = 1.5
# A client on the killed NATS node reconnects to another (0.5 s wait) and resubscribes.
NATS_SETTLE_S = 3.0
# A connection to a gateway copy that died mid-answer: the client's HTTP stack says so.
CONNECTION_ERRORS = ("APIConnectionError", "RemoteProtocolError", "ReadError")
DRAIN_DELAY_S = 3.0


@pytest.fixture(scope="module")
def copies_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("copies") / ".byorouter",
        copies=COPIES,
        nats_cluster=3,
        env_overrides={"BYOROUTER_STREAM_IDLE_TIMEOUT_S": str(STREAM_IDLE_S)},
        service_env={
            "router": ROUTER_ENV,
            "gateway": {
                "BYOROUTER_AUTH_CACHE_TTL_S": "2",
                "BYOROUTER_RATE_LIMIT_RPS": "0",
                "BYOROUTER_CONNECTION_RATE_LIMIT_RPS": "0",
                "BYOROUTER_DRAIN_DELAY_S": str(DRAIN_DELAY_S),
            },
            "tunnel": {"BYOROUTER_HEARTBEAT_S": "0.5", "BYOROUTER_KEEPALIVE_INTERVAL_S": "1"},
        },
        restart=RestartPolicy(first_delay_s=0.5, max_delay_s=4.0, healthy_after_s=5.0),
    )
    with stack:
        yield stack


@pytest.fixture(scope="module")
def copies_target(copies_stack: Stack) -> Target:
    async def create() -> Target:
        nc = await connect(copies_stack.nats_settings(), "copies-tests")
        try:
            tenant = await create_app_with_connection(
                Bus(nc), copies_stack.upstream_base_url, name="copies"
            )
        finally:
            await nc.close()
        return Target(copies_stack.gateway_url, tenant.app_api_key, tenant.connection_id)

    return run_sync(create)


def is_gone(pid: int) -> bool:
    """The process has exited (a zombie no longer holds its sockets)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


async def wait_gone(pid: int, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not is_gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still running"
        await asyncio.sleep(0.02)


async def fresh_get(url: str) -> int:
    """GET on a new TCP connection (so SO_REUSEPORT picks a copy anew); 0 if refused."""
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            return (await client.get(url)).status_code
        except httpx.TransportError:
            return 0


def acceptable_failure(outcome: Outcome, gateway_kills: list[tuple[float, float]]) -> bool:
    """A failure an app can tell is one: OpenAI's error shape, or (only for a request in
    flight on a gateway copy that was killed) the connection dropping without `[DONE]`.

    A gateway kill is the span from the signal to the moment the process is seen gone: a
    request sent in those milliseconds on a kept-alive connection to that copy went to the
    dying process (the kernel resets it), so it counts as in flight there."""
    if outcome.kind not in VIOLATIONS:
        return True
    if outcome.kind != UNCLEAR:
        return False
    on_killed_gateway = any(
        outcome.began <= gone and at <= outcome.began + outcome.took_s for at, gone in gateway_kills
    )
    dropped = outcome.detail.startswith(CONNECTION_ERRORS) or "neither [DONE]" in outcome.detail
    return on_killed_gateway and dropped


def in_flight(outcome: Outcome, at: float) -> bool:
    return outcome.began <= at <= outcome.began + outcome.took_s


async def test_one_copy_of_each_service_and_one_nats_node_killed_under_load(
    copies_stack: Stack, copies_target: Target
) -> None:
    stack, target = copies_stack, copies_target
    demo = stack.create_demo()
    await asyncio.to_thread(stack.start_demo_tunnel, demo)
    tunnel_target = Target(stack.gateway_url, demo["app_api_key"], demo["connection_id"])
    loads = [
        Load(target, workers=6, bound_s=20),
        Load(
            tunnel_target,
            stream_model="selfhosted/drip-40",
            plain_model="selfhosted/slow-300",
            workers=2,
            bound_s=20,
        ),
    ]
    # (what was killed, when, how long after it a new request may still fail)
    faults: list[tuple[str, float, float]] = []
    gone: dict[str, float] = {}
    probes: list[Outcome] = []
    for load in loads:
        load.start()
    try:
        await asyncio.sleep(2.0)
        for service in SERVICES:
            pid = stack.pids()[service]
            at = time.monotonic()
            stack.kill(service)
            await wait_gone(pid)
            gone[service] = time.monotonic()
            settle = SETTLE_S
            if service in ("gateway", "connect", "tunnel"):
                # The other copy holds the same port: a new connection reaches it at once.
                url = f"{getattr(stack, f'{service}_url')}/healthz"
                assert [await fresh_get(url) for _ in range(5)] == [200] * 5
            if service == "tunnel":
                # A tunnel client whose session was on the killed copy redials (its backoff):
                # until then its models answer 503 tunnel_offline.
                settle = await wait_serving(tunnel_target, 20, lambda o: o.kind == COMPLETE, probes)
            faults.append((service, at, settle + 0.5))
            await wait_for_copies(stack, {service: COPIES})
            await asyncio.sleep(SETTLE_S)
        faults.append(("nats-1", time.monotonic(), NATS_SETTLE_S))
        await asyncio.to_thread(stack.stop_nats_node, 1)
        await asyncio.sleep(NATS_SETTLE_S + 3.0)
    finally:
        outcomes = {id(load): await load.stop() for load in loads}
    direct, everything = outcomes[id(loads[0])], [o for got in outcomes.values() for o in got]

    gateway_kills = [(at, gone[what]) for what, at, _ in faults if what == "gateway"]
    unclear = [o for o in everything if not acceptable_failure(o, gateway_kills)]
    failed = [o for o in everything if o.kind != COMPLETE]
    summary = "; ".join(
        f"{what} killed: {sum(in_flight(o, at) for o in failed)} in flight failed, "
        f"{sum(at < o.began <= at + settle for o in failed)} started after it"
        for what, at, settle in faults
    )
    print(f"\nCHAOS copies x{COPIES}, 3 NATS nodes: {len(everything)} requests, {summary}")
    assert unclear == [], unclear[:5]
    # Only what was in flight at a kill fails: a request that began after it (and after the
    # time a NATS client needs to move nodes, or a tunnel client to redial) is served.
    late = [
        o
        for o in failed
        if not any(in_flight(o, at) or at <= o.began <= at + settle for _, at, settle in faults)
    ]
    assert late == [], late[:5]
    held = {o.tag for o in everything for _, at, _ in faults if in_flight(o, at)}
    assert len(failed) < len(held), "the surviving copies kept serving what they held"
    assert sum(o.kind == COMPLETE for o in everything) > len(everything) // 2
    # A tunnelled request whose tunnel copy died before the answer began fails with a 5xx the
    # router retries once the client has redialled the other copy: the user's own server may
    # then see it twice (the router cannot know whether the first reached it). Nothing else
    # may reach an upstream twice.
    tunnel_kill = next(at for what, at, _ in faults if what == "tunnel")
    retried = {o.tag for o in outcomes[id(loads[1])] if in_flight(o, tunnel_kill)}
    recorded = await recorded_requests(stack)
    twice = served_twice(recorded, [o.tag for o in everything])
    assert set(twice) <= retried, [o for o in everything if o.tag in set(twice) - retried]
    # The usage stream keeps three replicas: with a node gone, every report still arrives.
    await assert_usage_matches(stack, target, direct, lost_with_the_router=True)
    await asyncio.to_thread(stack.start_nats_node, 1)


async def serving_pid(stack: Stack, client_port: int) -> int:
    """Which gateway copy holds the TCP connection from local port `client_port`."""
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == stack.ports.gateway and (
            int(remote.split(":")[1], 16) == client_port
        ):
            inodes.add(fields[9])
    for name in stack.copies_of("gateway"):
        pid = stack.pids()[name]
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return pid
    raise AssertionError(f"no gateway copy holds the connection from port {client_port}")


async def test_a_gateway_copy_told_to_stop_finishes_its_stream_and_drains(
    copies_stack: Stack, copies_target: Target
) -> None:
    stack, target = copies_stack, copies_target
    await wait_for_copies(stack, {"gateway": COPIES})
    words = " ".join(f"w{n}" for n in range(16))
    # About 7 s of answer: it outlasts the drain delay, and ends within the grace period.
    body = {
        "model": "openai/drip-400",
        "stream": True,
        "messages": [{"role": "user", "content": words}],
    }
    headers = {
        "Authorization": f"Bearer {target.app_api_key}",
        "X-Byorouter-Connection": target.connection_id,
    }
    lines: list[str] = []
    statuses: list[tuple[float, int]] = []
    async with (
        httpx.AsyncClient(base_url=target.gateway_url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        stream = response.extensions["network_stream"]
        pid = await serving_pid(stack, stream.get_extra_info("client_addr")[1])
        reading = aiter(response.aiter_lines())
        lines.append(await anext(reading))
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGTERM)

        async def probe() -> None:
            # Fresh connections while the copy drains: it says 503, the other copy 200.
            while not is_gone(pid):
                statuses.append(
                    (time.monotonic() - stopped_at, await fresh_get(stack.gateway_url + "/readyz"))
                )
                await asyncio.sleep(0.05)

        prober = asyncio.create_task(probe())
        lines += [line async for line in reading]
    ended_s = time.monotonic() - stopped_at
    await wait_gone(pid, within_s=15)
    await prober
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    text = "".join(
        (choice.get("delta") or {}).get("content") or ""
        for event in data[:-1]
        for choice in orjson.loads(event).get("choices") or []
    )
    assert text == words, "the stream the stopped copy held ran to its end"
    assert ended_s > DRAIN_DELAY_S, "it was not cut when the listener closed"
    during = [status for at, status in statuses if at < DRAIN_DELAY_S - 0.5]
    after = [status for at, status in statuses if at > DRAIN_DELAY_S + 0.5]
    assert 503 in during, "the stopping copy told load balancers it is draining"
    assert 200 in during, "the other copy stayed ready"
    assert after, "probed after the drain delay"
    assert set(after) == {200}, "once its listener closed, only the other copy answers"
    await wait_for_copies(stack, {"gateway": COPIES})
