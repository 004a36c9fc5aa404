"""The whole stack on one machine: NATS, PostgreSQL, a fake upstream and the five services.

`byorouter dev` (what `make run` calls), the test suite's full-stack fixture and the benchmark
all use `Stack`. Every child is a plain `python -m ...` process; its output goes to
`<state_dir>/logs/<name>.log` (and, if asked, to the terminal with its name in front), so a test
can read every line a service wrote.

When the stack starts its own NATS, the bus enforces least privilege: every service connects as
its own user with the permissions `byorouter_common.nats_permissions` derives from the contract,
and the stack's own helpers (readiness, the demo app) and the CLI connect as `admin`. Fresh
random passwords are written to `<state_dir>/nats-users.json` (owner-only) on every start.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final, TypedDict, TypeVar

import httpx
import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr

from byorouter_cli.backends import EmbeddedPostgres, NatsServer
from byorouter_common import nats_permissions
from byorouter_common.bus import Bus, connect
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError
from byorouter_common.settings import ServiceSettings

T = TypeVar("T")

SERVICES: Final = ("keystore", "router", "gateway", "connect", "tunnel")
UPSTREAM: Final = "fake-openai"
# Services with an HTTP front door are ready when GET /readyz answers 200; the others when
# they answer NATS micro discovery ($SRV.PING.<name>).
HTTP_SERVICES: Final = frozenset({"gateway", "connect", "tunnel"})
DEMO_APP_NAME: Final = "BYORouter demo"
# The example chat app (examples/chat-app/): a child like the services, started for the demo app.
EXAMPLE_APP: Final = "example-app"
EXAMPLE_APP_SCRIPT: Final = Path(__file__).resolve().parents[2] / "examples" / "chat-app" / "app.py"
EXAMPLE_CALLBACK_PATH: Final = "/api/byorouter/callback"
DEMO_MODEL: Final = "openai/gpt-4o-mini"
STOP_GRACE_S: Final = 5.0
LOG_TAIL_LINES: Final = 20
DEFAULT_NATS_PORT: Final = 4222
_NOT_INHERITED: Final = frozenset(
    {"DATABASE_URL", "BYOROUTER_KEYRING_FILE", "BYOROUTER_NATS_USER", "BYOROUTER_NATS_PASSWORD"}
)


class StackError(RuntimeError):
    """The stack could not start; `log_tail` holds the last lines of the child that failed."""

    def __init__(self, message: str, log_tail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.log_tail = list(log_tail)

    def __str__(self) -> str:
        if not self.log_tail:
            return self.message
        return self.message + "\n" + "\n".join(f"    {line}" for line in self.log_tail)


class DemoFacts(TypedDict):
    """What `.byorouter/demo.json` holds: enough to call the gateway right away."""

    api_url: str
    app_api_key: str
    client_id: str
    connection_id: str
    model: str


@dataclass(frozen=True)
class Ports:
    gateway: int = 4000
    connect: int = 8080
    tunnel: int = 4001
    upstream: int = 4100
    example_app: int = 3000

    @classmethod
    def free(cls) -> Ports:
        return cls(*free_ports(5))


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so none is handed out twice)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def port_is_free(port: int) -> bool:
    """True if a server could listen on `port` now (connections in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        # As uvicorn and nats-server do: otherwise a port closed moments ago looks busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code, even when the caller's thread already runs a loop."""

    async def run() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def _write_private_text(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)  # the file may have existed with looser permissions


def _write_private_json(path: Path, data: Mapping[str, Any]) -> None:
    _write_private_text(path, json.dumps(data, indent=2) + "\n")


class ChildProcess:
    """One child of the stack; a thread copies its output to its log file (and the terminal)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        echo: IO[str] | None,
        echo_lock: threading.Lock,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.echo = echo
        self._echo_lock = echo_lock
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.last_output = 0.0  # time.monotonic() of the last line copied
        self.process: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
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
        with open(self.log_path, "ab") as log:
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


class Stack:
    """NATS, PostgreSQL, the fake OpenAI upstream and the services, started and stopped together.

    `nats_url` / `database_url` reuse running backends instead of starting them. On a NATS it
    starts itself every service gets its own user and password; on a given `nats_url` they
    connect anonymously unless `nats_passwords` ({user: password}, for a server configured with
    `nats_permissions.render_config`) is given. `env_overrides` go to every service,
    `service_env[name]` to one. `ports` defaults to free ports so several stacks (tests, a
    benchmark) can run beside a `make run`.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        nats_url: str | None = None,
        database_url: str | None = None,
        env_overrides: Mapping[str, str] | None = None,
        service_env: Mapping[str, Mapping[str, str]] | None = None,
        ports: Ports | None = None,
        nats_port: int | None = None,
        nats_passwords: Mapping[str, str] | None = None,
        services: Sequence[str] = SERVICES,
        upstream: bool = True,
        example_app: bool = False,
        echo: IO[str] | bool | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services: {sorted(unknown)}")
        self.state_dir = state_dir.resolve()
        self.logs_dir = self.state_dir / "logs"
        self.keyring_file = self.state_dir / "keyring.json"
        self.demo_file = self.state_dir / "demo.json"
        self.dev_file = self.state_dir / "dev.json"
        self.nats_users_file = self.state_dir / "nats-users.json"
        self.nats_config_file = self.state_dir / "nats.conf"
        self.ports = ports or Ports.free()
        self.services = tuple(name for name in SERVICES if name in services)
        self.with_upstream = upstream
        # The example chat app needs the gateway, Connect and the demo app it plays.
        self.with_example_app = example_app
        self.env_overrides = dict(env_overrides or {})
        self.service_env = {name: dict(env) for name, env in (service_env or {}).items()}
        # True echoes children's lines to stdout; a stream echoes them there; None/False: only logs.
        self.echo: IO[str] | None = sys.stdout if echo is True else (echo or None)
        self.ready_timeout_s = ready_timeout_s
        self._nats_url = nats_url
        self._database_url = database_url
        self._nats_port = nats_port
        # Empty: everyone connects anonymously (a bus without authorization).
        self._given_nats_passwords = dict(nats_passwords or {})
        self._nats_passwords = dict(self._given_nats_passwords)
        self._nats: NatsServer | None = None
        self._postgres: EmbeddedPostgres | None = None
        self._children: dict[str, ChildProcess] = {}
        self._echo_lock = threading.Lock()

    # --- where things are -------------------------------------------------------------------

    @property
    def nats_url(self) -> str:
        assert self._nats_url is not None, "start() first"
        return self._nats_url

    @property
    def nats_auth(self) -> bool:
        """True when every connection to this stack's NATS must log in as one of its users."""
        return bool(self._nats_passwords)

    def nats_settings(self, user: str = nats_permissions.ADMIN) -> ServiceSettings:
        """How to connect to this stack's bus as `user` (`admin` unless said otherwise).

        Anonymous when the bus has no authorization; the environment's BYOROUTER_NATS_USER and
        BYOROUTER_NATS_PASSWORD never leak in, so helpers connect the same way everywhere.
        """
        password = self._nats_passwords.get(user)
        if self.nats_auth and password is None:
            raise KeyError(f"no NATS user {user!r} on this stack")
        return ServiceSettings(
            NATS_URL=self.nats_url,
            nats_user=user if password is not None else None,
            nats_password=password,
        )

    @property
    def database_url(self) -> str:
        assert self._database_url is not None, "start() first"
        return self._database_url

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def connect_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.connect}"

    @property
    def tunnel_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.tunnel}"

    @property
    def upstream_url(self) -> str:
        """Root of the fake OpenAI upstream (its `/_fake/...` inspection routes live here)."""
        return f"http://127.0.0.1:{self.ports.upstream}"

    @property
    def upstream_base_url(self) -> str:
        """The fake upstream as a provider `base_url`, the way an OpenAI SDK would be pointed."""
        return self.upstream_url + "/v1"

    @property
    def example_app_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.example_app}"

    @property
    def demo_redirect_uris(self) -> list[str]:
        """The example app's callback under both loopback names a browser may use for it."""
        port = self.ports.example_app
        return [
            f"http://127.0.0.1:{port}{EXAMPLE_CALLBACK_PATH}",
            f"http://localhost:{port}{EXAMPLE_CALLBACK_PATH}",
        ]

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def log_lines(self, name: str) -> list[str]:
        """Everything `name` (a service, `fake-openai` or `nats`) has written so far."""
        try:
            return self.log_file(name).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def log_files(self) -> list[Path]:
        return sorted(self.logs_dir.glob("*.log"))

    def flush_logs(self, quiet_s: float = 0.3, timeout_s: float = 3.0) -> None:
        """Wait until every child has been quiet for `quiet_s`, so its log file is complete."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            newest = max((c.last_output for c in self._children.values()), default=0.0)
            if time.monotonic() - newest >= quiet_s:
                return
            time.sleep(0.05)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Stack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        for old in self.logs_dir.glob("*.log"):
            old.unlink()
        try:
            self._check_ports_free()
            self._start_backends()
            if "keystore" in self.services:
                self._prepare_keystore()
            names = ([UPSTREAM] if self.with_upstream else []) + list(self.services)
            for name in names:
                self._launch(name)
            self._wait_ready(names)
            facts = {
                "nats_url": self.nats_url,
                "gateway_url": self.gateway_url,
                "connect_url": self.connect_url,
                "tunnel_url": self.tunnel_url,
            }
            admin = self.nats_settings()
            if admin.nats_user is not None and admin.nats_password is not None:
                # So `byorouter ...` run beside this stack logs in as admin by itself.
                facts |= {"nats_user": admin.nats_user, "nats_password": admin.nats_password}
            _write_private_json(self.dev_file, facts)
            if self.with_example_app:
                self._start_example_app(self.create_demo())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after 5 s), then PostgreSQL and NATS."""
        children = list(self._children.values())
        for child in children:
            child.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children:
            child.finish(deadline)
        self._children.clear()
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None
            self._database_url = None
        if self._nats is not None:
            self._nats.stop()
            self._nats = None
            self._nats_url = None
            self._nats_passwords = dict(self._given_nats_passwords)
        with contextlib.suppress(FileNotFoundError):
            self.dev_file.unlink()

    def stop_postgres(self) -> None:
        """Stop the PostgreSQL this stack started (an outage, for tests); services keep running."""
        if self._postgres is None:
            raise StackError("this stack did not start PostgreSQL")
        self._postgres.stop()
        self._postgres = None

    def stop_service(self, name: str) -> None:
        child = self._children.get(name)
        if child is not None:
            child.stop()

    def start_service(self, name: str) -> None:
        """(Re)start one service and wait until it is ready; its log file keeps growing."""
        child = self._children.get(name)
        if child is not None and child.running:
            return
        self._launch(name)
        self._wait_ready([name])

    def wait(self, poll_s: float = 0.5) -> str:
        """Block until a child exits on its own; returns its name (the dev loop's watchdog)."""
        while True:
            for name, child in self._children.items():
                if not child.running:
                    return name
            time.sleep(poll_s)

    def service_pids(self) -> dict[str, int]:
        """Process ids of the running services (not the backends or the fake upstream)."""
        return {name: pid for name, pid in self.pids().items() if name in SERVICES}

    def pids(self) -> dict[str, int]:
        """Process ids of everything this stack started and still holds (for `ps`-style checks)."""
        found = {
            name: child.process.pid
            for name, child in self._children.items()
            if child.process is not None
        }
        if self._nats is not None and self._nats.process is not None:
            found["nats"] = self._nats.process.pid
        if self._postgres is not None and self._postgres.pid is not None:
            found["postgres"] = self._postgres.pid
        return found

    def exit_code(self, name: str) -> int | None:
        child = self._children.get(name)
        return None if child is None else child.exit_code

    def last_lines(self, name: str, count: int = LOG_TAIL_LINES) -> list[str]:
        child = self._children.get(name)
        return [] if child is None else child.last_lines(count)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- starting ---------------------------------------------------------------------------

    def _check_ports_free(self) -> None:
        wanted = {
            name: getattr(self.ports, name) for name in HTTP_SERVICES if name in self.services
        }
        if self.with_upstream:
            wanted["fake OpenAI upstream"] = self.ports.upstream
        if self.with_example_app:
            wanted["example app"] = self.ports.example_app
        for what, port in sorted(wanted.items(), key=lambda item: item[1]):
            if not port_is_free(port):
                raise StackError(
                    f"Port {port} ({what}) is already in use on 127.0.0.1: stop whatever "
                    "holds it, or choose another port."
                )

    def _start_backends(self) -> None:
        if self._nats_url is None:
            self._write_nats_users()
            self._nats = NatsServer(
                self._nats_port, config_file=self.nats_config_file, log_file=self.log_file("nats")
            ).start()
            self._nats_url = self._nats.url
        if self._database_url is None and "keystore" in self.services:
            try:
                self._postgres = EmbeddedPostgres(self.state_dir / "pgdata").start()
            except Exception as exc:
                raise StackError(
                    f"PostgreSQL did not start ({type(exc).__name__}); its log is "
                    f"{self.state_dir / 'pgdata' / 'log'}."
                ) from exc
            self._database_url = self._postgres.url

    def _write_nats_users(self) -> None:
        """Fresh passwords for every NATS user, and the server config that checks them."""
        self._nats_passwords = {user: secrets.token_urlsafe(24) for user in nats_permissions.USERS}
        _write_private_json(self.nats_users_file, self._nats_passwords)
        _write_private_text(
            self.nats_config_file, nats_permissions.render_config(self._nats_passwords)
        )

    def _prepare_keystore(self) -> None:
        if not self.keyring_file.exists():
            self._run_keystore_command("init-keyring")
            if not self.keyring_file.exists():
                raise StackError(
                    f"init-keyring did not create {self.keyring_file}.", self._log_tail("keystore")
                )
        self._run_keystore_command("migrate")

    def _run_keystore_command(self, command: str) -> None:
        argv = [sys.executable, "-m", "byorouter_keystore", command]
        with open(self.log_file("keystore"), "ab") as log:
            try:
                done = subprocess.run(
                    argv,
                    env=self._env_for("keystore"),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=120,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise StackError(
                    f"`python -m byorouter_keystore {command}` took over 120 s.",
                    self._log_tail("keystore"),
                ) from None
        if done.returncode != 0:
            raise StackError(
                f"`python -m byorouter_keystore {command}` failed (exit {done.returncode}).",
                self._log_tail("keystore"),
            )

    def _log_tail(self, name: str) -> list[str]:
        return self.log_lines(name)[-LOG_TAIL_LINES:]

    def _argv_for(self, name: str) -> list[str]:
        if name == UPSTREAM:
            return [
                sys.executable,
                "-m",
                "byorouter_fakes.openai",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports.upstream),
            ]
        return [sys.executable, "-m", f"byorouter_{name}"]

    def _start_example_app(self, demo: DemoFacts) -> None:
        """Run examples/chat-app as the demo app: its users connect their keys through Connect."""
        if not EXAMPLE_APP_SCRIPT.exists():
            raise StackError(f"The example app is not here: {EXAMPLE_APP_SCRIPT}.")
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        env |= {
            "PYTHONUNBUFFERED": "1",
            "BYOROUTER_API_URL": self.gateway_url,
            "BYOROUTER_APP_API_KEY": demo["app_api_key"],
            "BYOROUTER_CLIENT_ID": demo["client_id"],
            "BYOROUTER_CONNECT_URL": self.connect_url,
            "CHAT_APP_BASE_URL": self.example_app_url,
            "CHAT_APP_HOST": "127.0.0.1",
            "CHAT_APP_PORT": str(self.ports.example_app),
        }
        child = ChildProcess(
            EXAMPLE_APP,
            [sys.executable, str(EXAMPLE_APP_SCRIPT)],
            env,
            self.log_file(EXAMPLE_APP),
            self.echo,
            self._echo_lock,
        )
        self._children[EXAMPLE_APP] = child
        child.start()
        self._wait_ready([EXAMPLE_APP])

    def _env_for(self, name: str) -> dict[str, str]:
        # Only keystore may see the database and the keyring; nobody inherits them by accident.
        # Nor does anyone inherit a NATS login meant for somebody else.
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        env["NATS_URL"] = self.nats_url
        env["PYTHONUNBUFFERED"] = "1"
        if name == UPSTREAM:
            return env
        password = self._nats_passwords.get(name)
        if password is not None:
            env["BYOROUTER_NATS_USER"] = name
            env["BYOROUTER_NATS_PASSWORD"] = password
        env.update(self.env_overrides)
        if name == "keystore":
            env["DATABASE_URL"] = self.database_url
            env["BYOROUTER_KEYRING_FILE"] = str(self.keyring_file)
        elif name == "router":
            # The fake upstream listens on loopback, which the router refuses by default.
            env["BYOROUTER_ALLOW_PRIVATE_UPSTREAMS"] = "true"
        elif name in HTTP_SERVICES:
            prefix = f"BYOROUTER_{name.upper()}"
            env[f"{prefix}_HOST"] = "127.0.0.1"
            env[f"{prefix}_PORT"] = str(getattr(self.ports, name))
            if name == "gateway":
                # Manage links the gateway hands out must point at this stack's Connect page.
                env["BYOROUTER_CONNECT_PUBLIC_URL"] = self.connect_url
        env.update(self.service_env.get(name, {}))
        return env

    def _launch(self, name: str) -> None:
        child = ChildProcess(
            name,
            self._argv_for(name),
            self._env_for(name),
            self.log_file(name),
            self.echo,
            self._echo_lock,
        )
        self._children[name] = child
        child.start()

    def _wait_ready(self, names: Sequence[str]) -> None:
        try:
            _run_sync(lambda: self._wait_ready_async(list(names)))
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
                        if await self._is_ready(name, http, nc):
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

    async def _connect_bus(self) -> NatsClient:
        """A short-lived admin connection that fails fast (503) instead of retrying for minutes."""
        return await connect(self.nats_settings(), "devstack")

    async def _is_ready(self, name: str, http: httpx.AsyncClient, nc: NatsClient) -> bool:
        if name == UPSTREAM:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.ports.upstream)
            except OSError:
                return False
            writer.close()
            return True
        if name == EXAMPLE_APP:
            try:
                response = await http.get(f"{self.example_app_url}/healthz")
            except httpx.HTTPError:
                return False
            return response.status_code == 200
        if name in HTTP_SERVICES:
            port = getattr(self.ports, name)
            try:
                response = await http.get(f"http://127.0.0.1:{port}/readyz")
            except httpx.HTTPError:
                return False
            return response.status_code == 200
        try:
            await nc.request(f"$SRV.PING.{name}", b"", timeout=0.5)
        except (nats.errors.Error, TimeoutError):
            return False
        return True

    # --- the demo app -----------------------------------------------------------------------

    def create_demo(self) -> DemoFacts:
        """The demo app and connection from demo.json if they still work, else new ones."""
        existing = self._load_demo()
        if existing is not None and self._demo_still_works(existing):
            facts = existing
        else:
            facts = _run_sync(self._create_demo_async)
        _write_private_json(self.demo_file, facts)
        return facts

    def _load_demo(self) -> DemoFacts | None:
        try:
            raw = json.loads(self.demo_file.read_text())
        except (OSError, ValueError):
            return None
        keys = DemoFacts.__annotations__.keys()
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in keys):
            return None
        return DemoFacts(
            api_url=self.gateway_url,
            app_api_key=raw["app_api_key"],
            client_id=raw["client_id"],
            connection_id=raw["connection_id"],
            model=DEMO_MODEL,
        )

    def _demo_still_works(self, facts: DemoFacts) -> bool:
        """The app key still authenticates and its connection still points at our upstream."""
        if "gateway" not in self.services:
            return False
        try:
            response = httpx.get(
                f"{self.gateway_url}/v1/connections/{facts['connection_id']}",
                headers={"Authorization": f"Bearer {facts['app_api_key']}"},
                timeout=5.0,
            )
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        try:
            providers = response.json().get("providers") or []
        except (ValueError, AttributeError):
            return True
        base_urls = {p.get("base_url") for p in providers if isinstance(p, dict)}
        # A previous run may have used another upstream port (tests pick free ports).
        if base_urls and self.upstream_base_url not in base_urls:
            return False
        # ... or another example-app port, which the app's redirect URIs must name.
        return self._demo_redirects_here(facts["client_id"])

    def _demo_redirects_here(self, client_id: str) -> bool:
        async def look_up() -> ks.AppInfo:
            nc = await self._connect_bus()
            try:
                return await Bus(nc, timeout_s=10.0).request(
                    ks.APP_GET, ks.AppGet(client_id=client_id)
                )
            finally:
                await nc.close()

        try:
            app = _run_sync(look_up)
        except ByoError:
            return False
        return set(self.demo_redirect_uris) <= set(app.redirect_uris)

    async def _create_demo_async(self) -> DemoFacts:
        nc = await self._connect_bus()
        try:
            bus = Bus(nc, timeout_s=10.0)
            app = await bus.request(
                ks.APP_CREATE,
                ks.AppCreate(name=DEMO_APP_NAME, redirect_uris=self.demo_redirect_uris),
            )
            # A made-up key: the fake upstream accepts any key, a real provider none of these.
            fake_key = "sk-demo-" + secrets.token_urlsafe(24)
            connection = await bus.request(
                ks.CONNECTION_CREATE,
                ks.ConnectionCreate(
                    app_id=app.app_id,
                    providers=[
                        ks.ProviderCredentialInput(
                            provider="openai",
                            api_key=SecretStr(fake_key),
                            base_url=self.upstream_base_url,
                        )
                    ],
                ),
            )
        finally:
            await nc.close()
        return DemoFacts(
            api_url=self.gateway_url,
            app_api_key=app.app_api_key.get_secret_value(),
            client_id=app.client_id,
            connection_id=connection.connection_id,
            model=DEMO_MODEL,
        )


# --- `byorouter dev` -------------------------------------------------------------------------


def banner(stack: Stack, demo: DemoFacts) -> str:
    key, conn, api = demo["app_api_key"], demo["connection_id"], demo["api_url"]
    nats_login = (
        f" (log in as admin: password in {stack.nats_users_file})" if stack.nats_auth else ""
    )
    example = ""
    if stack.with_example_app:
        example = f"""
  Example app              {stack.example_app_url}
                           (Connect API Keys: any OpenAI key will do with the base URL
                           {stack.upstream_base_url} under "Advanced", the fake upstream)"""
    return f"""
BYORouter is running. Ctrl-C stops everything.

  API (OpenAI-compatible)  {api}/v1
  Connect UI               {stack.connect_url}
  Tunnel endpoint          {stack.tunnel_url}
  NATS                     {stack.nats_url}{nats_login}
  Logs                     {stack.logs_dir}/
  Demo app                 client id {demo["client_id"]} (details in {stack.demo_file}){example}

Try it with curl:

  curl {api}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" \\
    -H "X-Byorouter-Connection: {conn}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{demo["model"]}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

or with the openai Python SDK:

  from openai import OpenAI
  client = OpenAI(base_url="{api}/v1", api_key="{key}",
                  default_headers={{"X-Byorouter-Connection": "{conn}"}})
  reply = client.chat.completions.create(
      model="{demo["model"]}", messages=[{{"role": "user", "content": "Hello"}}])
  print(reply.choices[0].message.content)
"""


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _report_failure(json_mode: bool, error: ByoError | StackError) -> None:
    message = error.message
    if json_mode:
        envelope = (
            error.envelope()
            if isinstance(error, ByoError)
            else ByoError(500, "stack_failed", message).envelope()
        )
        sys.stdout.write(json.dumps(envelope) + "\n")
        sys.stdout.flush()
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    if isinstance(error, StackError):
        for line in error.log_tail:
            sys.stderr.write(f"    {line}\n")


def run_dev(
    state_dir: Path, ports: Ports, *, json_mode: bool = False, example_app: bool = True
) -> int:
    """Start the stack, create the demo app, print how to call it, and run until Ctrl-C.

    The example chat app runs too unless `example_app` is false, it is not there (an install
    without the repository's examples/), or its port is taken (it is optional: a developer's own
    app on :3000 must not stop the stack).
    """
    nats_url = os.environ.get("NATS_URL") or None
    if example_app and EXAMPLE_APP_SCRIPT.exists() and not port_is_free(ports.example_app):
        sys.stderr.write(
            f"note: port {ports.example_app} is in use, so the example app "
            "(examples/chat-app) does not start.\n"
        )
        example_app = False
    stack = Stack(
        state_dir,
        nats_url=nats_url,
        database_url=os.environ.get("DATABASE_URL") or None,
        # A person reads these lines: plain text unless they asked for JSON logs.
        env_overrides={"BYOROUTER_LOG_FORMAT": os.environ.get("BYOROUTER_LOG_FORMAT", "text")},
        ports=ports,
        nats_port=None if nats_url or not port_is_free(DEFAULT_NATS_PORT) else DEFAULT_NATS_PORT,
        # With --json stdout carries one JSON object, so the services' lines go to stderr.
        echo=sys.stderr if json_mode else sys.stdout,
        example_app=example_app and EXAMPLE_APP_SCRIPT.exists(),
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # Set explicitly: a shell that starts us in the background hands SIGINT down as ignored.
    signal.signal(signal.SIGINT, _interrupt)
    try:
        stack.start()
        demo = stack.create_demo()
        if json_mode:
            sys.stdout.write(
                json.dumps(
                    {
                        **demo,
                        "connect_url": stack.connect_url,
                        "tunnel_url": stack.tunnel_url,
                        "nats_url": stack.nats_url,
                        "example_app_url": (
                            stack.example_app_url if stack.with_example_app else None
                        ),
                        "state_dir": str(stack.state_dir),
                    }
                )
                + "\n"
            )
        else:
            sys.stdout.write(banner(stack, demo))
        sys.stdout.flush()
        dead = stack.wait()
        _report_failure(
            json_mode,
            StackError(
                f"{dead} exited unexpectedly (code {stack.exit_code(dead)}); stopping the stack. "
                "Its last log lines:",
                stack.last_lines(dead),
            ),
        )
        return 1
    except KeyboardInterrupt:
        return 0
    except (StackError, ByoError) as exc:
        _report_failure(json_mode, exc)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)
        if not json_mode:
            sys.stderr.write("BYORouter stopped.\n")
