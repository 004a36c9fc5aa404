"""The dev stack's process supervision on its own: any child, told apart only by its `ChildSpec`.

Children here are tiny Python scripts, not services, so these show what any future child (say a
demo client) gets for free: readiness, a log file, failure reports and a clean stop.
"""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from byorouter_cli.dev.admin_bus import connect_admin
from byorouter_cli.dev.errors import StackError
from byorouter_cli.dev.ports import free_ports
from byorouter_cli.dev.processes import ChildSpec, PortReady, RestartPolicy, Supervisor
from byorouter_common.settings import ServiceSettings

LISTENER = """
import socket, sys, time
print("listening", flush=True)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
time.sleep(60)
"""


@pytest.fixture
def supervisor(nats_url: str) -> Iterator[Supervisor]:
    async def connect_bus() -> NatsClient:
        return await connect_admin(ServiceSettings(NATS_URL=nats_url))

    children = Supervisor(echo=io.StringIO(), ready_timeout_s=10.0, connect_bus=connect_bus)
    try:
        yield children
    finally:
        children.stop_all()


def python_child(name: str, script: str, log_dir: Path, *args: str, port: int) -> ChildSpec:
    return ChildSpec(
        name,
        [sys.executable, "-c", script, *args],
        {"PYTHONUNBUFFERED": "1"},
        log_dir / f"{name}.log",
        PortReady(port),
    )


def test_a_child_is_ready_when_its_port_answers_and_its_output_is_in_its_log(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    port = free_ports(1)[0]
    supervisor.launch(python_child("listener", LISTENER, tmp_path, str(port), port=port))
    supervisor.wait_ready(["listener"])
    assert supervisor.is_running("listener")
    supervisor.flush_logs()
    assert (tmp_path / "listener.log").read_text() == "listening\n"
    assert isinstance(supervisor.echo, io.StringIO)
    assert "listener    | listening\n" in supervisor.echo.getvalue()


def test_a_child_that_dies_while_starting_is_reported_with_its_last_lines(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    script = "print('no config here'); raise SystemExit(3)"
    supervisor.launch(python_child("broken", script, tmp_path, port=free_ports(1)[0]))
    with pytest.raises(StackError) as failure:
        supervisor.wait_ready(["broken"])
    assert "broken exited with code 3" in failure.value.message
    assert failure.value.log_tail == ["no config here"]


def test_stop_all_ends_every_child_and_forgets_it(supervisor: Supervisor, tmp_path: Path) -> None:
    ports = free_ports(2)
    for name, port in zip(("one", "two"), ports, strict=True):
        supervisor.launch(python_child(name, LISTENER, tmp_path, str(port), port=port))
    supervisor.wait_ready(["one", "two"])
    assert sorted(supervisor.pids()) == ["one", "two"]
    supervisor.stop_all()
    assert supervisor.pids() == {}
    assert not supervisor.is_running("one")
    assert not supervisor.is_running("two")


def test_the_watchdog_names_the_child_that_exited_on_its_own(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    port = free_ports(1)[0]
    supervisor.launch(python_child("steady", LISTENER, tmp_path, str(port), port=port))
    supervisor.launch(python_child("brief", "print('bye')", tmp_path, port=port))
    assert supervisor.wait_for_exit(poll_s=0.05) == "brief"
    assert supervisor.exit_code("brief") == 0


def restarting_supervisor(nats_url: str, policy: RestartPolicy) -> Supervisor:
    async def connect_bus() -> NatsClient:
        return await connect_admin(ServiceSettings(NATS_URL=nats_url))

    return Supervisor(
        echo=io.StringIO(), ready_timeout_s=10.0, connect_bus=connect_bus, restart=policy
    )


def wait_until(condition: Callable[[], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_a_killed_child_is_started_again_and_the_restart_is_announced(
    nats_url: str, tmp_path: Path
) -> None:
    port = free_ports(1)[0]
    children = restarting_supervisor(nats_url, RestartPolicy(first_delay_s=0.2))
    try:
        children.launch(python_child("router", LISTENER, tmp_path, str(port), port=port))
        children.wait_ready(["router"])
        first_pid = children.pids()["router"]
        os.kill(first_pid, signal.SIGKILL)
        wait_until(
            lambda: children.is_running("router") and children.pids()["router"] != first_pid, 5
        )
        children.wait_ready(["router"])
        assert children.restarts("router") == 1
        assert isinstance(children.echo, io.StringIO)
        said = children.echo.getvalue()
        assert "router exited unexpectedly with code -9; restarting it in 0.2 s (restart 1)" in said
        assert "restarting it in 0.2 s (restart 1)" in (tmp_path / "router.log").read_text()
    finally:
        children.stop_all()
    assert children.pids() == {}


def test_a_crash_loop_waits_longer_after_each_crash_up_to_the_cap(
    nats_url: str, tmp_path: Path
) -> None:
    policy = RestartPolicy(first_delay_s=0.1, max_delay_s=0.4)
    children = restarting_supervisor(nats_url, policy)
    try:
        children.launch(python_child("crashy", "raise SystemExit(3)", tmp_path, port=1))
        wait_until(lambda: children.restarts("crashy") >= 5, 10)
    finally:
        children.stop_all()
    assert isinstance(children.echo, io.StringIO)
    delays = re.findall(r"code 3; restarting it in ([0-9.]+) s", children.echo.getvalue())
    assert [float(d) for d in delays[:5]] == [0.1, 0.2, 0.4, 0.4, 0.4]


def test_a_child_stopped_on_purpose_stays_stopped(nats_url: str, tmp_path: Path) -> None:
    port = free_ports(1)[0]
    children = restarting_supervisor(nats_url, RestartPolicy(first_delay_s=0.05))
    try:
        children.launch(python_child("steady", LISTENER, tmp_path, str(port), port=port))
        children.wait_ready(["steady"])
        children.stop("steady")
        time.sleep(0.6)
        assert not children.is_running("steady")
        assert children.restarts("steady") == 0
    finally:
        children.stop_all()


def test_stop_all_while_a_restart_is_pending_leaves_nothing_running(
    nats_url: str, tmp_path: Path
) -> None:
    children = restarting_supervisor(nats_url, RestartPolicy(first_delay_s=0.3))
    children.launch(python_child("brief", "print('bye')", tmp_path, port=1))
    wait_until(lambda: children.restarts("brief") == 1, 5)
    children.stop_all()
    time.sleep(0.5)
    assert children.pids() == {}
