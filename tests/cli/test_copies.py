"""`Stack(copies=2, nats_cluster=3)`, what `byorouter dev --copies 2 --nats-cluster 3` runs: two
copies of every service, HTTP copies sharing their port, on a three-node NATS cluster whose
JetStream keeps three replicas of the usage stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import nats
import pytest

from byorouter_cli.dev.admin_bus import run_sync
from byorouter_cli.dev.processes import RestartPolicy
from byorouter_cli.dev.stack import SERVICES, Stack
from byorouter_common.bus import connect_options
from byorouter_common.contracts import events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(
        tmp_path_factory.mktemp("copies") / ".byorouter",
        copies=2,
        nats_cluster=3,
        service_env={"gateway": {"BYOROUTER_ACCESS_LOG": "true"}},
        restart=RestartPolicy(first_delay_s=0.2, max_delay_s=1.0),
    ) as running:
        yield running


def test_every_copy_has_its_own_log_and_metrics_port(stack: Stack) -> None:
    copies = [name for service in SERVICES for name in (service, f"{service}-2")]
    assert sorted(stack.service_pids()) == sorted(copies)
    logs = {path.name for path in stack.log_files()}
    assert {f"{name}.log" for name in copies} | {f"nats-{n}.log" for n in (1, 2, 3)} <= logs
    urls = {stack.metrics_url(name) for name in copies}
    assert len(urls) == len(copies)
    for url in urls:
        assert httpx.get(url, timeout=5).status_code == 200, url


def test_gateway_copies_share_the_port_and_both_serve(stack: Stack) -> None:
    deadline = time.monotonic() + 30
    while True:
        # A new connection each time, so the kernel picks a copy each time. Refused (no key),
        # but an API request: each copy's access log has a line for it.
        assert httpx.get(stack.gateway_url + "/v1/models", timeout=5).status_code == 401
        stack.flush_logs(quiet_s=0.05, timeout_s=0.5)
        served = [
            sum("/v1/models" in line for line in stack.log_lines(name))
            for name in ("gateway", "gateway-2")
        ]
        if all(served):
            return
        assert time.monotonic() < deadline, f"requests per copy: {served}"


def test_the_usage_stream_has_a_replica_on_every_node(stack: Stack) -> None:
    async def replicas() -> tuple[int, int]:
        settings = stack.nats_settings("keystore")
        nc = await nats.connect(**connect_options(settings, "test"))
        try:
            info = await nc.jetstream().stream_info(events.USAGE_STREAM.name)
        finally:
            await nc.close()
        assert info.cluster is not None
        return info.config.num_replicas or 1, 1 + len(info.cluster.replicas or [])

    assert run_sync(replicas) == (3, 3)


def test_a_killed_copy_is_restarted_and_a_killed_nats_node_rejoins(stack: Stack) -> None:
    before = stack.pids()["gateway-2"]
    stack.kill("gateway-2")
    stack.stop_nats_node(2)
    assert "nats-2" not in stack.pids()
    # The services' clients on node 2 moved to the others: the stack still serves.
    deadline = time.monotonic() + 30
    while httpx.get(stack.gateway_url + "/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    stack.start_nats_node(2)
    while stack.pids().get("gateway-2") in (None, before):
        assert time.monotonic() < deadline, "gateway-2 was not restarted"
        time.sleep(0.1)
    assert stack.restarts("gateway-2") == 1
