"""`python -m bench.usage`: keystore's cost of recording usage, without the rest of the stack.

Starts PostgreSQL, NATS (JetStream) and one keystore, publishes `--reports` usage reports
straight to the usage stream as fast as it can, and prints how long until every one is in
`usage_daily` and how much CPU keystore spent per report (decision 0025). `--source DIR` runs
the keystore (and its libs/common) from another tree, e.g. `git archive <commit> libs services`
unpacked, to compare with an older way of recording.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nats
import psutil
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from byorouter_cli.backends import EmbeddedPostgres, NatsServer
from byorouter_common.bus import Bus
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks


async def _connections(bus: Bus, count: int) -> tuple[str, list[str]]:
    deadline = time.monotonic() + 60
    while True:
        try:
            app = await bus.request(ks.APP_CREATE, ks.AppCreate(name="usage bench"))
            break
        except Exception:  # keystore not serving yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
    ids = []
    for _ in range(count):
        key = ks.ProviderCredentialInput(
            provider="openai", api_key=SecretStr("sk-bench-" + secrets.token_hex(12))
        )
        created = await bus.request(
            ks.CONNECTION_CREATE, ks.ConnectionCreate(app_id=app.app_id, providers=[key])
        )
        ids.append(created.connection_id)
    return app.app_id, ids


async def _consuming(nc: NatsClient) -> None:
    js = nc.jetstream()
    while True:
        try:
            await js.consumer_info(events.USAGE_STREAM.name, events.USAGE_RECORDER.name)
            return
        except Exception:  # keystore has not made its consumer yet
            await asyncio.sleep(0.2)


async def _measure(
    nats_url: str, database_url: str, keystore: psutil.Process, reports: int, connections: int
) -> None:
    nc = await nats.connect(nats_url)
    engine = create_async_engine(database_url)
    try:
        app_id, ids = await _connections(Bus(nc, timeout_s=10), connections)
        await _consuming(nc)
        await asyncio.sleep(1.0)  # keystore settled
        rng = random.Random(1)
        payloads = []
        for i in range(reports):
            report = events.UsageEvent(
                request_id="req_" + secrets.token_hex(12),
                app_id=app_id,
                connection_id=ids[i % connections],
                provider="openai",
                model=rng.choice(["gpt-4o-mini", "gpt-4o"]),
                prompt_tokens=10,
                completion_tokens=5,
                total_tokens=15,
                at=datetime.now(UTC),
            )
            payloads.append((report.request_id, report.model_dump_json().encode()))
        cpu_before = sum(keystore.cpu_times()[:2])
        started = time.monotonic()
        for request_id, data in payloads:
            await nc.publish(events.USAGE.subject, data, headers={"Nats-Msg-Id": request_id})
        await nc.flush()
        published_s = time.monotonic() - started
        while True:
            async with engine.connect() as conn:
                recorded = await conn.scalar(
                    text("SELECT coalesce(sum(requests), 0) FROM usage_daily")
                )
            if recorded >= reports:
                break
            await asyncio.sleep(0.05)
        took_s = time.monotonic() - started
        cpu_s = sum(keystore.cpu_times()[:2]) - cpu_before
        print(
            f"{reports} reports over {connections} connections: published in {published_s:.2f} s, "
            f"all recorded after {took_s:.2f} s ({reports / took_s:.0f}/s); keystore CPU "
            f"{cpu_s:.2f} s = {cpu_s / reports * 1e6:.0f} us per report",
            flush=True,
        )
    finally:
        await engine.dispose()
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--source", type=Path, help="a tree to run keystore from")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="byorouter-usage-bench-"))
    postgres = EmbeddedPostgres(base / "pg" / "data", delete_on_stop=True).start()
    server = NatsServer().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOROUTER_")}
    env.update(
        NATS_URL=server.url,
        DATABASE_URL=postgres.url,
        BYOROUTER_KEYRING_FILE=str(base / "keyring.json"),
        BYOROUTER_LOG_LEVEL="WARNING",
    )
    if args.source:
        source = args.source.resolve()
        env["PYTHONPATH"] = f"{source}/services/keystore:{source}/libs/common"
    keystore: subprocess.Popen[bytes] | None = None
    try:
        command = [sys.executable, "-m", "byorouter_keystore"]
        for step in ("migrate", "init-keyring"):
            subprocess.run([*command, step], env=env, check=True, capture_output=True)
        with open(base / "keystore.log", "ab") as log:
            keystore = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            asyncio.run(
                _measure(
                    server.url,
                    postgres.url,
                    psutil.Process(keystore.pid),
                    args.reports,
                    args.connections,
                )
            )
    finally:
        if keystore is not None:
            keystore.terminate()
            keystore.wait(15)
        server.stop()
        postgres.stop()


if __name__ == "__main__":
    main()
