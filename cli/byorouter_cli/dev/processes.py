"""Supervised child processes: start each, log its output, wait until it is ready, stop them all.

Nothing here knows which children a stack has: each comes as a `ChildSpec` (what to run, where
its log goes, how to tell it is ready), so a new kind of child needs only a new spec.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import httpx
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from byorouter_cli.dev.admin_bus import run_sync
from byorouter_cli.dev.errors import StackError
from byorouter_cli.dev.state import open_private_log
from byorouter_common.errors import ByoError

STOP_GRACE_S: Final = 5.0
LOG_TAIL_LINES: Final = 20
WATCH_INTERVAL_S: Final = 0.2


@dataclass(frozen=True)
class RestartPolicy:
    """Restart a child that exits on its own, like compose's `restart: unless-stopped`.

    The wait doubles with each crash in a row up to `max_delay_s`, so a crash loop costs little;
    a child that stayed up `healthy_after_s` starts again from `first_delay_s`.
    """

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    healthy_after_s: float = 60.0

    def delay_s(self, crashes_in_a_row: int) -> float:
        return float(min(self.max_delay_s, self.first_delay_s * 2 ** (crashes_in_a_row - 1)))


@dataclass
class _Restarts:
    total: int = 0
    in_a_row: int = 0
    due: float | None = None  # time.monotonic() of the pending restart


@dataclass(frozen=True)
class HttpReady:
    """Ready when GET `url` answers 200."""

    url: str


@dataclass(frozen=True)
class PortReady:
    """Ready when 127.0.0.1:`port` accepts a TCP connection."""

    port: int


@dataclass(frozen=True)
class MicroReady:
    """Ready when the NATS micro service `service` answers discovery ($SRV.PING.<service>),
    from at least `copies` processes (each answers with its own id)."""

    service: str
    copies: int = 1


@dataclass(frozen=True)
class AnswersOn:
    """Ready when a request on the NATS `subject` gets an answer (a tunnel's `.status`: its
    client is connected)."""

    subject: str


Readiness = HttpReady | PortReady | MicroReady | AnswersOn


@dataclass(frozen=True)
class ChildSpec:
    """One child: what to run, with which environment, where its output goes, when it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready: Readiness


class ChildProcess:
    """One running child; a thread copies its output to its log file (and the terminal)."""

    def __init__(self, spec: ChildSpec, echo: IO[str] | None, echo_lock: threading.Lock) -> None:
        self.spec = spec
        self.name = spec.name
        self.echo = echo
        self._echo_lock = echo_lock
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.last_output = 0.0  # time.monotonic() of the last line copied
        self.started_at = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.spec.argv,
            env=self.spec.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in the terminal reaches only the launcher, which then
            # stops the children in order instead of all of them dying at once.
            start_new_session=True,
        )
        self._pump = threading.Thread(
            target=self._copy_output, name=f"log-{self.name}", daemon=True
        )
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        with open_private_log(self.spec.log_path) as log:
            for raw in iter(self.process.stdout.readline, b""):
                log.write(raw)
                log.flush()
                self.last_output = time.monotonic()
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.tail.append(line)
                if self.echo is not None:
                    with self._echo_lock:
                        self.echo.write(f"{self.name:<12}| {line}\n")
                        self.echo.flush()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def last_lines(self, count: int = LOG_TAIL_LINES) -> list[str]:
        if self._pump is not None:
            # Let the pump catch up with what a process that just exited wrote last.
            self._pump.join(0.5)
        return list(self.tail)[-count:]

    def terminate(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Wait until `deadline` for the process to exit, then kill it."""
        if self.process is None:
            return
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._pump is not None:
            self._pump.join(2.0)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        self.terminate()
        self.finish(time.monotonic() + grace_s)


class Supervisor:
    """The children of one stack, by name: launched, waited for, watched and stopped together.

    `echo` also gets every child's lines, each with the child's name in front. `connect_bus`
    opens the connection that readiness checks use (NATS micro discovery). With a `restart`
    policy a watchdog thread starts again every child that exits without being told to, and
    says so (on `echo` and in the child's log).
    """

    def __init__(
        self,
        *,
        echo: IO[str] | None,
        ready_timeout_s: float,
        connect_bus: Callable[[], Awaitable[NatsClient]],
        restart: RestartPolicy | None = None,
    ) -> None:
        self.echo = echo
        self.ready_timeout_s = ready_timeout_s
        self.restart = restart
        self._connect_bus = connect_bus
        self._children: dict[str, ChildProcess] = {}
        self._echo_lock = threading.Lock()
        # Held while the set of children changes: the watchdog must not restart a child that
        # stop()/stop_all() is ending.
        self._lock = threading.Lock()
        self._stopped: set[str] = set()
        self._restarts: dict[str, _Restarts] = {}
        self._watchdog: threading.Thread | None = None
        self._closing = threading.Event()

    def launch(self, spec: ChildSpec) -> None:
        """Start `spec`'s process (replacing a stopped child of the same name) without waiting."""
        child = ChildProcess(spec, self.echo, self._echo_lock)
        with self._lock:
            self._children[spec.name] = child
            self._stopped.discard(spec.name)
            self._restarts.pop(spec.name, None)
            child.start()
            if self.restart is not None and self._watchdog is None:
                self._closing.clear()
                self._watchdog = threading.Thread(
                    target=self._watch, args=(self.restart,), name="dev-watchdog", daemon=True
                )
                self._watchdog.start()

    def restarts(self, name: str) -> int:
        """How often the watchdog has started `name` again."""
        found = self._restarts.get(name)
        return 0 if found is None else found.total

    def _watch(self, policy: RestartPolicy) -> None:
        while not self._closing.wait(WATCH_INTERVAL_S):
            with self._lock:
                if self._closing.is_set():
                    return
                for name, child in list(self._children.items()):
                    if name not in self._stopped and not child.running:
                        self._restart_when_due(name, child, policy)

    def _restart_when_due(self, name: str, child: ChildProcess, policy: RestartPolicy) -> None:
        now = time.monotonic()
        state = self._restarts.setdefault(name, _Restarts())
        if state.due is None:
            healthy = now - child.started_at >= policy.healthy_after_s
            state.in_a_row = 1 if healthy else state.in_a_row + 1
            state.total += 1
            delay = policy.delay_s(state.in_a_row)
            state.due = now + delay
            self._announce(
                child,
                f"{name} exited unexpectedly with code {child.exit_code}; "
                f"restarting it in {delay:g} s (restart {state.total})",
            )
        elif now >= state.due:
            state.due = None
            child.finish(now)  # reaps it and lets its log pump end
            fresh = ChildProcess(child.spec, self.echo, self._echo_lock)
            self._children[name] = fresh
            fresh.start()

    def _announce(self, child: ChildProcess, line: str) -> None:
        if self.echo is not None:
            with self._echo_lock:
                self.echo.write(f"{'byorouter':<12}| {line}\n")
                self.echo.flush()
        with open_private_log(child.spec.log_path) as log:
            log.write(f"byorouter dev: {line}\n".encode())

    def wait_ready(self, names: Sequence[str]) -> None:
        """Block until every child in `names` is ready; StackError if one exits or times out."""
        try:
            run_sync(lambda: self._wait_ready_async(list(names)))
        except ByoError as exc:  # NATS itself is unreachable
            raise StackError(exc.message) from None

    async def _wait_ready_async(self, names: list[str]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(names)
        nc = await self._connect_bus()
        try:
            async with httpx.AsyncClient(timeout=1.0) as http:
                while pending:
                    for name in list(pending):
                        child = self._children[name]
                        if not child.running:
                            raise StackError(
                                f"{name} exited with code {child.exit_code} while starting; "
                                "its last log lines:",
                                child.last_lines(),
                            )
                        if await _is_ready(child.spec.ready, http, nc):
                            pending.remove(name)
                    if not pending:
                        return
                    if time.monotonic() > deadline:
                        first = pending[0]
                        raise StackError(
                            f"{', '.join(pending)} not ready after {self.ready_timeout_s:g} s; "
                            f"last log lines of {first}:",
                            self._children[first].last_lines(),
                        )
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def is_running(self, name: str) -> bool:
        child = self._children.get(name)
        return child is not None and child.running

    def stop(self, name: str) -> None:
        """Stop `name` for good: the watchdog leaves it stopped until it is launched again."""
        with self._lock:
            self._stopped.add(name)
            child = self._children.get(name)
        if child is not None:
            child.stop()

    def stop_all(self) -> None:
        """SIGTERM to every child at once, then SIGKILL to those still there after 5 s."""
        with self._lock:
            self._closing.set()
            watchdog, self._watchdog = self._watchdog, None
            children = list(self._children.values())
            self._stopped.update(self._children)
        if watchdog is not None:
            watchdog.join()
        for child in children:
            child.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children:
            child.finish(deadline)
        with self._lock:
            self._children.clear()
            self._stopped.clear()
            self._restarts.clear()

    def wait_for_exit(self, poll_s: float = 0.5) -> str:
        """Block until a child exits on its own and stays down; returns its name.

        With a restart policy nobody stays down, so this returns only by an exception (Ctrl-C).
        """
        while True:
            if self.restart is None:
                for name, child in list(self._children.items()):
                    if not child.running:
                        return name
            time.sleep(poll_s)

    def pids(self) -> dict[str, int]:
        return {
            name: child.process.pid
            for name, child in self._children.items()
            if child.process is not None
        }

    def exit_code(self, name: str) -> int | None:
        child = self._children.get(name)
        return None if child is None else child.exit_code

    def last_lines(self, name: str, count: int = LOG_TAIL_LINES) -> list[str]:
        child = self._children.get(name)
        return [] if child is None else child.last_lines(count)

    def flush_logs(self, quiet_s: float = 0.3, timeout_s: float = 3.0) -> None:
        """Wait until every child has been quiet for `quiet_s`, so its log file is complete."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            newest = max((c.last_output for c in self._children.values()), default=0.0)
            if time.monotonic() - newest >= quiet_s:
                return
            time.sleep(0.05)


def run_to_end(
    argv: Sequence[str], env: Mapping[str, str], log_path: Path, timeout_s: float = 120
) -> str | None:
    """Run a one-shot command (keystore's `migrate`) with its output appended to `log_path`;
    None if it succeeded, else what went wrong (`took over 120 s`, `failed (exit 1)`)."""
    with open_private_log(log_path) as log:
        try:
            done = subprocess.run(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"took over {timeout_s:g} s"
    return None if done.returncode == 0 else f"failed (exit {done.returncode})"


async def _is_ready(ready: Readiness, http: httpx.AsyncClient, nc: NatsClient) -> bool:
    if isinstance(ready, PortReady):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", ready.port)
        except OSError:
            return False
        writer.close()
        return True
    if isinstance(ready, HttpReady):
        try:
            response = await http.get(ready.url)
        except httpx.HTTPError:
            return False
        return response.status_code == 200
    if isinstance(ready, MicroReady) and ready.copies > 1:
        return len(await _discovery_ids(nc, ready.service)) >= ready.copies
    subject = ready.subject if isinstance(ready, AnswersOn) else f"$SRV.PING.{ready.service}"
    try:
        await nc.request(subject, b"{}", timeout=0.5)
    except (nats.errors.Error, TimeoutError):
        return False
    return True


async def _discovery_ids(nc: NatsClient, service: str, listen_s: float = 0.3) -> set[str]:
    """The ids of every process of `service` that answers a discovery ping within `listen_s`."""
    ids: set[str] = set()
    inbox = nc.new_inbox()

    async def collect(msg: Msg) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            ids.add(str(json.loads(msg.data)["id"]))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(f"$SRV.PING.{service}", b"", reply=inbox)
        await asyncio.sleep(listen_s)
    except nats.errors.Error:
        pass
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return ids
