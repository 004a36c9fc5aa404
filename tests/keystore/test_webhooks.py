"""Webhooks through a real keystore: signed per Standard Webhooks, retried, and never lost to a
restart of the keystore that sends them (the outbox is in PostgreSQL)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from aiohttp import web
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr
from standardwebhooks import Webhook as Verifier

from byorouter_cli.backends import NatsServer
from byorouter_common import errors
from byorouter_common.bus import Bus
from byorouter_common.contracts import Empty, events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.keystore import headless as hl
from byorouter_keystore.webhooks import check_webhook_url
from tests.conftest import (
    KeystoreEnv,
    KeystoreProcess,
    create_database,
    drop_database,
    run_keystore_command,
    wait_until_serving,
)

# Retries a second apart and a sender that looks every 0.2 s: the production schedule starts at 5 s.
SENDER_ENV = {
    "BYOROUTER_ALLOW_PRIVATE_UPSTREAMS": "true",
    "BYOROUTER_WEBHOOK_RETRY_SCHEDULE_S": "[1, 1, 1]",
    "BYOROUTER_WEBHOOK_POLL_INTERVAL_S": "0.2",
    "BYOROUTER_WEBHOOK_TIMEOUT_S": "3",
}


@dataclass(frozen=True)
class SenderEnv(KeystoreEnv):
    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**SENDER_ENV, **extra})


@dataclass
class Receiver:
    """A loopback webhook receiver; answers `statuses` in turn, then 200."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], str, int]] = field(default_factory=list)
    # How long it takes to answer: longer than the sender's timeout is a receiver that hangs.
    delay_s: float = 0

    async def handle(self, request: web.Request) -> web.Response:
        status = self.statuses.pop(0) if self.statuses else 200
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.received.append((headers, await request.text(), status))
        await asyncio.sleep(self.delay_s)
        return web.Response(status=status)

    async def wait_for(self, count: int, within_s: float = 15) -> None:
        deadline = time.monotonic() + within_s
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} deliveries"
            await asyncio.sleep(0.05)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook.url = f"http://127.0.0.1:{port}/hook"
    yield hook
    await runner.cleanup()


@pytest.fixture(scope="module")
def sender_nats_url() -> Iterator[str]:
    server = NatsServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sender_env(
    database_url: str, sender_nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SenderEnv]:
    base = tmp_path_factory.mktemp("webhooks")
    env = SenderEnv(
        sender_nats_url, create_database(database_url, "webhooks"), base / "keyring.json", base
    )
    for command in ("migrate", "init-keyring"):
        done = run_keystore_command(env.env(), command)
        assert done.returncode == 0, done.stderr
    yield env
    drop_database(database_url, env.database_url)


@pytest.fixture
async def nc(sender_nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(sender_nats_url)
    yield client
    await client.close()


async def start_sender(env: SenderEnv, nc: NatsClient) -> KeystoreProcess:
    process = KeystoreProcess(env, "keystore")
    await wait_until_serving(nc, process)
    return process


@pytest.fixture
async def keystore(sender_env: SenderEnv, nc: NatsClient) -> AsyncIterator[list[KeystoreProcess]]:
    """The running keystore, as a one-item list a test may replace by restarting it."""
    running = [await start_sender(sender_env, nc)]
    yield running
    for process in running:
        process.stop()


@dataclass(frozen=True)
class HookedApp:
    app_id: str
    client_id: str
    connection_id: str
    secret: str


async def app_with_webhook(bus: Bus, url: str) -> HookedApp:
    """A fresh app with one connection, whose webhook posts to `url`."""
    app = await bus.request(ks.APP_CREATE, ks.AppCreate(name="webhook app"))
    connection = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai", api_key=SecretStr("sk-test-" + secrets.token_hex(12))
                )
            ],
        ),
    )
    created = await bus.request(ks.WEBHOOK_ADD, ks.WebhookAdd(client_id=app.client_id, url=url))
    return HookedApp(
        app.app_id, app.client_id, connection.connection_id, created.secret.get_secret_value()
    )


def verified(secret: str, delivery: tuple[dict[str, str], str, int]) -> Any:
    headers, body, _ = delivery
    return Verifier(secret).verify(body, headers)


async def test_disconnect_is_delivered_signed_after_a_500_and_a_keystore_restart(
    keystore: list[KeystoreProcess], sender_env: SenderEnv, nc: NatsClient, receiver: Receiver
) -> None:
    bus = Bus(nc, timeout_s=10)
    hooked = await app_with_webhook(bus, receiver.url)
    app_id, connection_id, secret = hooked.app_id, hooked.connection_id, hooked.secret
    assert secret.startswith("whsec_")
    receiver.statuses = [500]

    await bus.request(
        ks.CONNECTION_DELETE, ks.ConnectionRef(app_id=app_id, connection_id=connection_id)
    )
    await receiver.wait_for(1)
    # The keystore that saw the 500 goes away before its retry is due; a new one sends it.
    keystore[0].stop()
    keystore[0] = await start_sender(sender_env, nc)
    await receiver.wait_for(2)

    first, second = receiver.received[:2]
    assert (first[2], second[2]) == (500, 200)
    event = verified(secret, second)
    assert event["type"] == "connection.disconnected"
    assert event["data"] == {"connection_id": connection_id}
    # The same message id on every attempt, so the receiver can drop a repeat.
    assert first[0]["webhook-id"] == second[0]["webhook-id"]
    assert verified(secret, first) == event
    with pytest.raises(Exception, match="signature"):
        Verifier("whsec_" + "A" * 43 + "=").verify(second[1], second[0])
    # Delivered means done: nothing more arrives.
    await asyncio.sleep(1.5)
    assert len(receiver.received) == 2
    assert secret not in keystore[0].log_text()


async def test_a_failing_key_is_reported_once_and_its_recovery_once(
    keystore: list[KeystoreProcess], nc: NatsClient, receiver: Receiver
) -> None:
    bus = Bus(nc, timeout_s=10)
    hooked = await app_with_webhook(bus, receiver.url)
    app_id, connection_id, secret = hooked.app_id, hooked.connection_id, hooked.secret

    async def report(status: str) -> None:
        event = events.CredentialStatusEvent(
            connection_id=connection_id,
            app_id=app_id,
            provider="openai",
            status="failing" if status == "failing" else "ok",
            last_error="The openai key was rejected." if status == "failing" else None,
        )
        await nc.publish(events.CREDENTIAL_STATUS.subject, event.model_dump_json().encode())
        await nc.flush()
        await asyncio.sleep(0.3)  # the router's reports are minutes apart, not racing

    # Several router copies may each report the same rejection.
    for status in ("failing", "failing", "failing", "ok", "ok"):
        await report(status)
    await receiver.wait_for(2)
    await asyncio.sleep(1)
    types = [verified(secret, d)["type"] for d in receiver.received]
    assert types == ["credential.failing", "credential.recovered"]
    failing = verified(secret, receiver.received[0])["data"]
    assert failing == {
        "connection_id": connection_id,
        "provider": "openai",
        "error": "The openai key was rejected.",
    }


async def test_receiver_down_is_retried_then_marked_failed(
    keystore: list[KeystoreProcess], nc: NatsClient, receiver: Receiver
) -> None:
    bus = Bus(nc, timeout_s=10)
    hooked = await app_with_webhook(bus, receiver.url)
    app_id, connection_id = hooked.app_id, hooked.connection_id
    receiver.statuses = [503, 503, 503, 503, 503]
    await bus.request(
        ks.CONNECTION_DELETE, ks.ConnectionRef(app_id=app_id, connection_id=connection_id)
    )
    # The first attempt and one per retry in the schedule (three), then no more.
    await receiver.wait_for(4)
    await asyncio.sleep(2)
    assert len(receiver.received) == 4
    listed = await bus.request(ks.WEBHOOK_LIST, ks.WebhookListRequest(client_id=hooked.client_id))
    assert [(w.pending, w.failed) for w in listed.webhooks] == [(0, 1)]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.0.0.5/hook",
        "http://127.1/hook",
        "http://[::ffff:169.254.169.254]/latest",
        "https://user:pw@example.com/hook",
    ],
)
def test_private_or_secret_carrying_urls_are_refused(url: str) -> None:
    with pytest.raises(errors.ByoError) as refused:
        check_webhook_url(url, allow_private=False)
    assert refused.value.status == 400
    assert url not in refused.value.message


def test_a_public_url_is_accepted() -> None:
    check_webhook_url("https://hooks.example.com/byorouter", allow_private=False)


async def test_webhook_secrets_survive_a_key_rotation_and_prune(
    keystore: list[KeystoreProcess], nc: NatsClient, receiver: Receiver
) -> None:
    bus = Bus(nc, timeout_s=10)
    hooked = await app_with_webhook(bus, receiver.url)
    rotated = await bus.request(ks.KEYS_ROTATE, Empty(), timeout_s=30)
    pruned = await bus.request(ks.KEYS_PRUNE, Empty())
    assert pruned.removed_versions == [rotated.active_version - 1]

    await bus.request(
        ks.CONNECTION_DELETE,
        ks.ConnectionRef(app_id=hooked.app_id, connection_id=hooked.connection_id),
    )
    await receiver.wait_for(1, within_s=5)
    assert verified(hooked.secret, receiver.received[0])["type"] == "connection.disconnected"


async def test_tunnel_online_and_offline_are_told_once_per_change(
    keystore: list[KeystoreProcess], nc: NatsClient, receiver: Receiver
) -> None:
    bus = Bus(nc, timeout_s=10)
    app = await bus.request(ks.APP_CREATE, ks.AppCreate(name="tunnel webhook app"))
    connection = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[ks.ProviderCredentialInput(provider="selfhosted", base_url=receiver.url)],
        ),
    )
    created = await bus.request(
        ks.WEBHOOK_ADD, ks.WebhookAdd(client_id=app.client_id, url=receiver.url)
    )
    tunnel = await bus.request(
        ks.TUNNEL_REGISTER,
        ks.TunnelRegister(app_id=app.app_id, connection_id=connection.connection_id),
    )

    # As the tunnel service reports: connected, a models update, gone, and back.
    for online, models in ((True, []), (True, ["llama3"]), (False, []), (True, [])):
        await bus.request(
            ks.TUNNEL_PRESENCE,
            ks.TunnelPresence(tunnel_id=tunnel.tunnel_id, online=online, models=models),
        )
    await receiver.wait_for(3)
    await asyncio.sleep(1)
    secret = created.secret.get_secret_value()
    got = [verified(secret, d) for d in receiver.received]
    assert [e["type"] for e in got] == ["tunnel.online", "tunnel.offline", "tunnel.online"]
    assert got[0]["data"] == {
        "connection_id": connection.connection_id,
        "tunnel_id": tunnel.tunnel_id,
    }


async def test_a_hanging_receiver_does_not_slow_what_keystore_answers(
    keystore: list[KeystoreProcess], nc: NatsClient, receiver: Receiver
) -> None:
    bus = Bus(nc, timeout_s=10)
    hooked = await app_with_webhook(bus, receiver.url)
    receiver.delay_s = 10  # past the 3 s timeout: every attempt hangs until it is given up
    for _ in range(8):
        extra = await bus.request(
            ks.CONNECTION_CREATE,
            ks.ConnectionCreate(
                app_id=hooked.app_id,
                providers=[ks.ProviderCredentialInput(provider="openai", api_key=SecretStr("k"))],
            ),
        )
        await bus.request(
            ks.CONNECTION_DELETE,
            ks.ConnectionRef(app_id=hooked.app_id, connection_id=extra.connection_id),
        )
    await receiver.wait_for(8)  # all eight posts are hanging now

    # What the router asks on a cache miss, answered while the sender waits on the receiver.
    ref = ks.ConnectionRef(app_id=hooked.app_id, connection_id=hooked.connection_id)
    took = []
    for _ in range(20):
        started = time.monotonic()
        await bus.request(ks.CREDENTIALS_RESOLVE, ref)
        took.append(time.monotonic() - started)
    assert max(took) < 0.25, took


async def test_a_headless_key_replacement_is_told_as_connection_updated(
    keystore: list[KeystoreProcess], nc: NatsClient, receiver: Receiver
) -> None:
    bus = Bus(nc, timeout_s=10)
    hooked = await app_with_webhook(bus, receiver.url)
    await bus.request(
        hl.APP_HEADLESS_SET, hl.AppHeadlessSet(client_id=hooked.client_id, enabled=True)
    )

    # The app's server replaces its user's key: other copies of the app hear of it too.
    await bus.request(
        hl.HEADLESS_CONNECTION_UPDATE,
        hl.HeadlessConnectionUpdate(
            app_id=hooked.app_id,
            connection_id=hooked.connection_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai", api_key=SecretStr("sk-test-" + secrets.token_hex(12))
                )
            ],
        ),
    )
    await receiver.wait_for(1)
    event = verified(hooked.secret, receiver.received[0])
    assert event["type"] == "connection.updated"
    assert event["data"] == {"connection_id": hooked.connection_id}
