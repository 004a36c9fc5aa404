"""`Stack`: NATS, PostgreSQL, a fake upstream and the five services, started and stopped together.

`byorouter dev` (what `make run` calls), the test suite's full-stack fixture and the benchmark
all use `Stack`. Every child is a plain `python -m ...` process; its output goes to
`<state_dir>/logs/<name>.log` (and, if asked, to the terminal with its name in front), so a test
can read every line a service wrote.

When the stack starts its own NATS, the bus enforces least privilege: every service connects as
its own user with the permissions `byorouter_common.nats_permissions` derives from the contract,
and the stack's own helpers (readiness, the demo app) and the CLI connect as `admin`. Fresh
random passwords are written to `<state_dir>/nats-users.json` (owner-only) on every start.

With `copies` every service runs that many times (`gateway`, `gateway-2`, ...; HTTP copies share
their port); with `nats_cluster` NATS is a cluster of that many nodes (`nats_backend.py`). What
each child runs is in `children.py`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from nats.aio.client import Client as NatsClient

from byorouter_cli.backends import EmbeddedPostgres
from byorouter_cli.dev.admin_bus import connect_admin, run_sync
from byorouter_cli.dev.children import (
    HTTP_SERVICES,
    SERVICES,
    UPSTREAM,
    Backends,
    ChildSpecs,
    copy_name,
    service_of,
)
from byorouter_cli.dev.demo import (
    DEMO_TUNNEL_MODEL,
    EXAMPLE_APP,
    EXAMPLE_APP_SCRIPT,
    TUNNEL_CLIENT,
    DemoFacts,
    DemoTarget,
    ensure_demo,
    example_app_env,
    register_demo_tunnel,
)
from byorouter_cli.dev.errors import StackError
from byorouter_cli.dev.nats_backend import StackNats
from byorouter_cli.dev.ports import Ports, port_is_free
from byorouter_cli.dev.processes import (
    LOG_TAIL_LINES,
    RestartPolicy,
    Supervisor,
    run_to_end,
)
from byorouter_cli.dev.state import (
    StateDir,
    make_private_dir,
    write_private_json,
)
from byorouter_common import nats_permissions
from byorouter_common.settings import ServiceSettings


class Stack:
    """NATS, PostgreSQL, the fake OpenAI upstream and the services, started and stopped together.

    `nats_url` / `database_url` reuse running backends instead of starting them. On a NATS it
    starts itself every service gets its own user and password; on a given `nats_url` they
    connect anonymously unless `nats_passwords` ({user: password}, for a server configured with
    `nats_permissions.render_config`) is given. `env_overrides` go to every service,
    `service_env[name]` to one. `ports` defaults to free ports so several stacks (tests, a
    benchmark) can run beside a `make run`. With `restart`, a child that exits on its own is
    started again (`byorouter dev`, like compose's `restart: unless-stopped`).
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
        restart: RestartPolicy | None = None,
        copies: int = 1,
        nats_cluster: int = 1,
    ) -> None:
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services: {sorted(unknown)}")
        if copies < 1 or nats_cluster < 1:
            raise ValueError("copies and nats_cluster are at least 1")
        self._state = StateDir(state_dir.resolve())
        self.state_dir = self._state.root
        self.logs_dir = self._state.logs_dir
        self.keyring_file = self._state.keyring_file
        self.demo_file = self._state.demo_file
        self.dev_file = self._state.dev_file
        self.nats_users_file = self._state.nats_users_file
        self.nats_config_file = self._state.nats_config_file
        self.ports = ports or Ports.free()
        self.services = tuple(name for name in SERVICES if name in services)
        # Copies of every service: the first is `gateway`, the others `gateway-2`, ...
        self.copies = copies
        self.nats_cluster = nats_cluster
        self.with_upstream = upstream
        # The example chat app needs the gateway, Connect and the demo app it plays.
        self.with_example_app = example_app
        self.env_overrides = dict(env_overrides or {})
        self.service_env = {name: dict(env) for name, env in (service_env or {}).items()}
        self._specs = ChildSpecs(
            self.ports,
            self.logs_dir,
            self.keyring_file,
            copies=copies,
            env_overrides=self.env_overrides,
            service_env=self.service_env,
        )
        # True echoes children's lines to stdout; a stream echoes them there; None/False: only logs.
        self.echo: IO[str] | None = sys.stdout if echo is True else (echo or None)
        self.ready_timeout_s = ready_timeout_s
        self._nats_url = nats_url
        self._database_url = database_url
        self._nats_port = nats_port
        # Empty: everyone connects anonymously (a bus without authorization).
        self._given_nats_passwords = dict(nats_passwords or {})
        self._nats_passwords = dict(self._given_nats_passwords)
        self._nats: StackNats | None = None
        self._postgres: EmbeddedPostgres | None = None
        self._children = Supervisor(
            echo=self.echo,
            ready_timeout_s=ready_timeout_s,
            connect_bus=self._connect_bus,
            restart=restart,
        )

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
    def tunnel_ws_url(self) -> str:
        """Where tunnel clients dial: the tunnel service's WebSocket endpoint."""
        return self._specs.tunnel_ws_url

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

    def metrics_url(self, name: str) -> str:
        """Where the service (or copy, `router-2`) `name` serves its Prometheus metrics."""
        return f"http://127.0.0.1:{self._specs.metrics_ports[name]}/metrics"

    def log_file(self, name: str) -> Path:
        return self._specs.log_file(name)

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
        self._children.flush_logs(quiet_s, timeout_s)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Stack:
        make_private_dir(self.state_dir)
        make_private_dir(self.logs_dir)
        for old in self.logs_dir.glob("*.log"):
            old.unlink()
        try:
            self._check_ports_free()
            self._start_backends()
            if "keystore" in self.services:
                self._prepare_keystore()
            names = ([UPSTREAM] if self.with_upstream else []) + [
                copy_name(service, number)
                for service in self.services
                for number in range(1, self.copies + 1)
            ]
            for name in names:
                self._children.launch(self._specs.service(name))
            self._children.wait_ready(names)
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
            write_private_json(self.dev_file, facts)
            if self.with_example_app:
                self._start_example_app(self.create_demo())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after 5 s), then PostgreSQL and NATS."""
        self._children.stop_all()
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

    def start_postgres(self) -> None:
        """Start this stack's PostgreSQL again after `stop_postgres`, on the same data and URL."""
        if self._postgres is not None or self._database_url is None:
            raise StackError("this stack's PostgreSQL is running or was never started")
        self._postgres = EmbeddedPostgres(self._state.pgdata_dir).start()

    def restart_nats(self, down_s: float = 0.0) -> None:
        """Stop this stack's NATS (every node), wait `down_s`, start it again on the same ports
        and logins (an outage, for tests); every client has to reconnect."""
        self._own_nats().restart(down_s)

    def stop_nats_node(self, number: int) -> None:
        """Kill node `number` (1-based) of this stack's NATS cluster; clients move to others."""
        self._own_nats().stop_node(number)

    def start_nats_node(self, number: int) -> None:
        """Start cluster node `number` again and wait until its JetStream has caught up."""
        self._own_nats().start_node(number)

    def stop_service(self, name: str) -> None:
        """Stop a service or one copy of it (`gateway-2`) for good; the watchdog leaves it."""
        self._children.stop(name)

    def kill(self, name: str) -> None:
        """SIGKILL a service or one copy of it (`router-2`), as a crash: with a restart policy
        the watchdog starts it again."""
        os.kill(self._children.pids()[name], signal.SIGKILL)

    def start_service(self, name: str) -> None:
        """(Re)start one service or copy and wait until it is ready; its log keeps growing."""
        if self._children.is_running(name):
            return
        self._children.launch(self._specs.service(name))
        self._children.wait_ready([name])

    def start_copy(self, name: str) -> str:
        """Another copy of service `name` (router and keystore copies share a queue group,
        HTTP copies share the port, which a stack of `copies` > 1 opens with SO_REUSEPORT);
        returns the copy's name (`router-2`, ...), which `stop_service` and `pids` know."""
        if name not in self.services or (name in HTTP_SERVICES and self.copies == 1):
            raise ValueError(f"{name} cannot have a second copy on this stack")
        number = 2
        while copy_name(name, number) in self._children.pids():
            number += 1
        copy = copy_name(name, number)
        self._children.launch(self._specs.service(copy))
        return copy

    def restarts(self, name: str) -> int:
        """How often `name` was started again after exiting on its own."""
        return self._children.restarts(name)

    def wait(self, poll_s: float = 0.5) -> str:
        """Block until a child exits on its own; returns its name (the dev loop's watchdog)."""
        return self._children.wait_for_exit(poll_s)

    def service_pids(self) -> dict[str, int]:
        """Process ids of the running services and their copies (not backends or the fake)."""
        return {name: pid for name, pid in self.pids().items() if service_of(name) in SERVICES}

    def copies_of(self, service: str) -> list[str]:
        """The names of `service`'s copies this stack holds (`router`, `router-2`, ...)."""
        return [name for name in self._children.pids() if service_of(name) == service]

    def pids(self) -> dict[str, int]:
        """Process ids of everything this stack started and still holds (for `ps`-style checks):
        children by name, `nats` (or `nats-<n>` per cluster node) and `postgres`."""
        found = self._children.pids()
        if self._nats is not None:
            found |= self._nats.pids()
        if self._postgres is not None and self._postgres.pid is not None:
            found["postgres"] = self._postgres.pid
        return found

    def exit_code(self, name: str) -> int | None:
        return self._children.exit_code(name)

    def last_lines(self, name: str, count: int = LOG_TAIL_LINES) -> list[str]:
        return self._children.last_lines(name, count)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- the demo app -----------------------------------------------------------------------

    def create_demo(self) -> DemoFacts:
        """The demo app and connection from demo.json if they still work, else new ones."""
        target = DemoTarget(
            admin=self.nats_settings(),
            gateway_url=self.gateway_url,
            upstream_base_url=self.upstream_base_url,
            example_app_port=self.ports.example_app,
        )
        return ensure_demo(target, self.demo_file, can_check="gateway" in self.services)

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
            self._nats = StackNats(
                self._state, self.log_file("nats"), nodes=self.nats_cluster, port=self._nats_port
            ).start()
            self._nats_passwords = dict(self._nats.passwords)
            self._nats_url = self._nats.url
        if self._database_url is None and "keystore" in self.services:
            pgdata = self._state.pgdata_dir
            try:
                self._postgres = EmbeddedPostgres(pgdata).start()
            except Exception as exc:
                raise StackError(
                    f"PostgreSQL did not start ({type(exc).__name__}); its log is {pgdata / 'log'}."
                ) from exc
            self._database_url = self._postgres.url
        self._specs.backends = Backends(
            self.nats_url,
            self._nats_passwords,
            self._database_url,
            None if self._nats is None else self._nats.replicas,
        )

    def _own_nats(self) -> StackNats:
        if self._nats is None:
            raise StackError("this stack did not start NATS")
        return self._nats

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
        failure = run_to_end(argv, self._specs.env("keystore"), self.log_file("keystore"))
        if failure is not None:
            raise StackError(
                f"`python -m byorouter_keystore {command}` {failure}.", self._log_tail("keystore")
            )

    def _log_tail(self, name: str) -> list[str]:
        return self.log_lines(name)[-LOG_TAIL_LINES:]

    def start_demo_tunnel(self, demo: DemoFacts) -> str:
        """A tunnel client in front of the fake upstream, as a user's own server: registers a
        tunnel on the demo connection, runs `byorouter-tunnel` for it, waits until it is online;
        returns the model to ask for through it."""
        registered = run_sync(lambda: register_demo_tunnel(self.nats_settings(), demo))
        spec = self._specs.demo_tunnel(
            registered.token.get_secret_value(),
            registered.tunnel_id,
            self.upstream_base_url,
            self.state_dir / "tunnel-client.key",
        )
        self._children.launch(spec)
        self._children.wait_ready([TUNNEL_CLIENT])
        return DEMO_TUNNEL_MODEL

    def _start_example_app(self, demo: DemoFacts) -> None:
        """Run examples/chat-app as the demo app: its users connect their keys through Connect."""
        if not EXAMPLE_APP_SCRIPT.exists():
            raise StackError(f"The example app is not here: {EXAMPLE_APP_SCRIPT}.")
        app_env = example_app_env(
            demo,
            connect_url=self.connect_url,
            base_url=self.example_app_url,
            port=self.ports.example_app,
        )
        spec = self._specs.example_app(app_env)
        self._children.launch(spec)
        self._children.wait_ready([EXAMPLE_APP])

    async def _connect_bus(self) -> NatsClient:
        return await connect_admin(self.nats_settings())
