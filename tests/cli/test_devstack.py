"""The dev launcher (`Stack`) and the connect and tunnel services it starts.

These run only connect and tunnel (on a private NATS the stack starts itself), so they hold
without keystore, router or gateway; the full stack is exercised by tests/cli/test_cli.py and
tests/e2e through the session `stack` fixture.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from byorouter_cli.dev.errors import StackError
from byorouter_cli.dev.ports import Ports
from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import connect


def is_running(pid: int) -> bool:
    """True if `pid` exists and is not a zombie, i.e. what `ps` would show as still running."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def still_running(pids: list[int]) -> list[int]:
    return [pid for pid in pids if is_running(pid)]


@pytest.fixture(scope="module")
def front_doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("front") / ".byorouter",
        services=("connect", "tunnel"),
        upstream=False,
    ).start()
    try:
        yield stack
    finally:
        stack.stop()


async def ping(stack: Stack, service: str) -> bytes:
    # As admin: a stack that starts its own NATS turns away connections without a login.
    nc = await connect(stack.nats_settings(), "devstack-tests")
    try:
        return (await nc.request(f"$SRV.PING.{service}", b"", timeout=1)).data
    finally:
        await nc.close()


def test_connect_serves_health_and_a_landing_page(front_doors: Stack) -> None:
    assert httpx.get(front_doors.connect_url + "/healthz").status_code == 200
    assert httpx.get(front_doors.connect_url + "/readyz").status_code == 200
    landing = httpx.get(front_doors.connect_url + "/")
    assert landing.status_code == 200
    assert "text/html" in landing.headers["content-type"]
    assert "BYORouter Connect" in landing.text
    assert landing.headers["x-frame-options"] == "DENY"


def test_tunnel_serves_health(front_doors: Stack) -> None:
    assert httpx.get(front_doors.tunnel_url + "/healthz").status_code == 200
    assert httpx.get(front_doors.tunnel_url + "/readyz").status_code == 200


async def test_connect_and_tunnel_answer_nats_discovery(front_doors: Stack) -> None:
    for service in ("connect", "tunnel"):
        assert f'"name":"{service}"'.encode() in await ping(front_doors, service)


def test_each_service_output_is_captured_in_its_own_log_file(front_doors: Stack) -> None:
    front_doors.flush_logs()
    assert any("connect ready" in line for line in front_doors.log_lines("connect"))
    assert any("tunnel ready" in line for line in front_doors.log_lines("tunnel"))
    assert not any("connect ready" in line for line in front_doors.log_lines("tunnel"))


def test_dev_file_tells_the_cli_where_nats_is(front_doors: Stack) -> None:
    recorded = (front_doors.state_dir / "dev.json").read_text()
    assert front_doors.nats_url in recorded
    assert (front_doors.state_dir / "dev.json").stat().st_mode & 0o077 == 0


def test_state_dir_and_everything_in_it_are_owner_only(front_doors: Stack) -> None:
    front_doors.flush_logs()
    assert front_doors.state_dir.stat().st_mode & 0o777 == 0o700
    exposed = {
        str(path.relative_to(front_doors.state_dir)): oct(path.stat().st_mode & 0o777)
        for path in front_doors.state_dir.rglob("*")
        if path.stat().st_mode & 0o077
    }
    assert exposed == {}
    assert front_doors.log_files(), "the stack wrote no log files to check"


def test_a_stopped_service_shuts_down_cleanly_and_comes_back(front_doors: Stack) -> None:
    front_doors.stop_service("tunnel")
    assert front_doors.exit_code("tunnel") == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(front_doors.tunnel_url + "/healthz")
    front_doors.start_service("tunnel")
    assert httpx.get(front_doors.tunnel_url + "/readyz").status_code == 200
    front_doors.flush_logs()
    assert any("tunnel stopped" in line for line in front_doors.log_lines("tunnel"))


def test_stop_leaves_no_process_running(tmp_path: Path) -> None:
    stack = Stack(tmp_path / ".byorouter", services=("connect",), upstream=False).start()
    pids = list(stack.pids().values())
    assert sorted(stack.pids()) == ["connect", "nats"]
    stack.stop()
    assert still_running(pids) == []
    assert not (tmp_path / ".byorouter" / "dev.json").exists()


def test_a_service_that_dies_while_starting_fails_fast_with_its_last_log_lines(
    tmp_path: Path,
) -> None:
    stack = Stack(
        tmp_path / ".byorouter",
        services=("connect",),
        upstream=False,
        service_env={"connect": {"BYOROUTER_CONNECT_PORT": "not-a-port"}},
        ready_timeout_s=30,
    )
    with pytest.raises(StackError) as failure:
        stack.start()
    # start() cleaned up after itself: nothing of this stack is left.
    assert stack.pids() == {}
    assert "connect exited" in failure.value.message
    assert any("port" in line.lower() for line in failure.value.log_tail)


def test_a_busy_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    busy = Ports.free()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy.connect))
        holder.listen()
        stack = Stack(tmp_path / ".byorouter", services=("connect",), upstream=False, ports=busy)
        with pytest.raises(StackError, match=f"Port {busy.connect}"):
            stack.start()
    assert not (tmp_path / ".byorouter" / "logs" / "connect.log").exists()


def test_stack_can_be_used_from_inside_a_running_event_loop(tmp_path: Path) -> None:
    async def start_and_stop() -> int:
        stack = Stack(tmp_path / ".byorouter", services=("tunnel",), upstream=False).start()
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(stack.tunnel_url + "/readyz")).status_code
        finally:
            stack.stop()

    assert asyncio.run(start_and_stop()) == 200
