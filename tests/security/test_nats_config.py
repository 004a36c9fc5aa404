"""The NATS configuration itself: derived from the contract, committed for docker compose, and
accepted by the real nats-server with the passwords docker compose hands it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml  # type: ignore[import-untyped]  # no stubs installed

from byorouter_cli.backends import NatsServer, nats_server_binary
from byorouter_common import nats_permissions as perms
from byorouter_common.bus import connect_options
from byorouter_common.contracts import events
from byorouter_common.contracts import gateway as gw
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.base import Event
from byorouter_common.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED_CONFIG = ROOT / "deploy" / "nats.conf"
COMPOSE_FILE = ROOT / "docker-compose.yml"
_COMPOSE_DEFAULT = re.compile(r"^\$\{(?P<var>[A-Z_]+):-(?P<default>[^}]+)\}$")


def allows(patterns: tuple[str, ...], subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` one or more trailing tokens."""
    tokens = subject.split(".")
    for pattern in patterns:
        wanted = pattern.split(".")
        if wanted[-1] == ">" and len(tokens) >= len(wanted):
            wanted = wanted[:-1]
            candidate = tokens[: len(wanted)]
        else:
            candidate = tokens
        if len(candidate) == len(wanted) and all(
            w in ("*", t) for w, t in zip(wanted, candidate, strict=True)
        ):
            return True
    return False


def may_publish(user: str, subject: str) -> bool:
    granted = perms.permissions(user)
    return allows(granted.publish, subject) and not allows(granted.publish_deny, subject)


def test_only_router_may_ask_for_decrypted_keys() -> None:
    allowed = [user for user in perms.USERS if may_publish(user, ks.CREDENTIALS_RESOLVE.subject)]
    assert allowed == ["router"]


def test_only_keystore_may_subscribe_to_keystore_requests() -> None:
    """Requests such as connection.create carry plaintext keys on their way to keystore."""
    readers = [
        user
        for user in perms.USERS
        if allows(perms.permissions(user).subscribe, ks.CONNECTION_CREATE.subject)
    ]
    assert readers == ["keystore"]


def test_each_user_reads_only_its_own_inboxes() -> None:
    for user in perms.USERS:
        inboxes = [s for s in perms.permissions(user).subscribe if s.startswith("_INBOX")]
        assert inboxes == [f"_INBOX.{user}.>"], user


def test_every_event_in_the_contract_has_exactly_one_announcer() -> None:
    in_contract = sorted(e.subject for e in vars(events).values() if isinstance(e, Event))
    announced = sorted(e.subject for group in perms.ANNOUNCES.values() for e in group)
    assert announced == in_contract


def test_only_keystore_may_announce_that_an_app_key_was_revoked() -> None:
    announcers = [u for u in perms.USERS if may_publish(u, events.APP_KEY_REVOKED.subject)]
    assert announcers == ["keystore"]


def test_admin_may_call_every_endpoint_but_the_secret_one() -> None:
    for endpoint in ks.ENDPOINTS:
        expected = endpoint is not ks.CREDENTIALS_RESOLVE
        assert may_publish(perms.ADMIN, endpoint.subject) is expected, endpoint.subject


USAGE_STREAM = events.USAGE_STREAM.name
USAGE_CONSUMER = f"{USAGE_STREAM}.{events.USAGE_RECORDER.name}"


def test_only_router_keystore_and_gateway_may_use_jetstream_at_all() -> None:
    users = [
        u for u in perms.USERS if any(s.startswith("$JS") for s in perms.permissions(u).publish)
    ]
    assert users == ["keystore", "router", "gateway"]


def test_the_gateway_reaches_its_rate_limits_bucket_and_nothing_else_in_jetstream() -> None:
    """A forged entry there could lock an app out of every gateway; only gateways write it."""
    bucket = gw.RATE_LIMITS
    key = f"$KV.{bucket.name}.app.app_0123456789abcdefghij"
    assert [u for u in perms.USERS if may_publish(u, key)] == ["gateway"]
    for subject in (
        f"$JS.API.STREAM.INFO.{bucket.stream}",
        f"$JS.API.STREAM.CREATE.{bucket.stream}",
        f"$JS.API.DIRECT.GET.{bucket.stream}.{key}",
    ):
        assert [u for u in perms.USERS if may_publish(u, subject)] == ["gateway"], subject
    for subject in (
        f"$JS.API.STREAM.DELETE.{bucket.stream}",
        f"$JS.API.STREAM.PURGE.{bucket.stream}",
        f"$JS.API.STREAM.UPDATE.{bucket.stream}",
        f"$JS.API.STREAM.INFO.{USAGE_STREAM}",
        f"$JS.API.DIRECT.GET.{USAGE_STREAM}.{events.USAGE.subject}",
    ):
        assert not may_publish("gateway", subject), subject


def test_only_keystore_may_pull_and_ack_usage() -> None:
    """Whoever pulls from the usage consumer takes reports away from keystore: lost usage."""
    for subject in (
        f"$JS.API.CONSUMER.MSG.NEXT.{USAGE_CONSUMER}",
        f"$JS.ACK.{USAGE_CONSUMER}.1.2.3.4.5",
        f"$JS.API.CONSUMER.CREATE.{USAGE_CONSUMER}.{events.USAGE.subject}",
    ):
        assert [u for u in perms.USERS if may_publish(u, subject)] == ["keystore"], subject


def test_no_one_may_delete_purge_or_read_around_the_usage_stream() -> None:
    for subject in (
        f"$JS.API.STREAM.DELETE.{USAGE_STREAM}",
        f"$JS.API.STREAM.PURGE.{USAGE_STREAM}",
        f"$JS.API.STREAM.MSG.GET.{USAGE_STREAM}",
        f"$JS.API.STREAM.MSG.DELETE.{USAGE_STREAM}",
        f"$JS.API.CONSUMER.CREATE.{USAGE_STREAM}",
        f"$JS.API.CONSUMER.CREATE.{USAGE_STREAM}.spy.{events.USAGE.subject}",
        f"$JS.API.CONSUMER.DELETE.{USAGE_CONSUMER}",
    ):
        assert [u for u in perms.USERS if may_publish(u, subject)] == [], subject
    # The router only makes sure the stream exists; it cannot loosen its limits.
    assert not may_publish("router", f"$JS.API.STREAM.UPDATE.{USAGE_STREAM}")
    assert may_publish("router", f"$JS.API.STREAM.CREATE.{USAGE_STREAM}")


def test_the_committed_config_is_the_one_the_contract_gives() -> None:
    assert DEPLOYED_CONFIG.read_text() == perms.render_env_config(), (
        "deploy/nats.conf is stale: python -m byorouter_common.nats_permissions > deploy/nats.conf"
    )


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def compose_default(value: str) -> tuple[str, str]:
    """`${VAR:-default}` -> (VAR, default)."""
    found = _COMPOSE_DEFAULT.match(value)
    assert found is not None, value
    return found["var"], found["default"]


def test_compose_gives_each_service_its_own_login_and_nats_the_same_password() -> None:
    services = compose()["services"]
    nats_env = services["nats"]["environment"]
    for user in perms.SERVICE_USERS:
        env = services[user]["environment"]
        assert env["BYOROUTER_NATS_USER"] == user
        var, _ = compose_default(env["BYOROUTER_NATS_PASSWORD"])
        assert var == perms.password_env_var(user)
        assert nats_env[var] == env["BYOROUTER_NATS_PASSWORD"]
    assert perms.password_env_var(perms.ADMIN) in nats_env


def test_compose_runs_nats_with_jetstream_on_a_volume() -> None:
    """Without JetStream the router's usage reports have nowhere to wait for keystore."""
    nats_service = compose()["services"]["nats"]
    command = nats_service["command"]
    assert "-js" in command
    store = command[command.index("-sd") + 1]
    assert any(volume.endswith(":" + store) for volume in nats_service["volumes"])


@pytest.fixture(scope="module")
def compose_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """nats-server running deploy/nats.conf with the environment docker compose would give it."""
    env = dict(os.environ)
    for var, value in compose()["services"]["nats"]["environment"].items():
        env[var] = compose_default(value)[1]
    log = tmp_path_factory.mktemp("compose-nats") / "nats.log"
    server = NatsServer(config_file=DEPLOYED_CONFIG, log_file=log)
    # NatsServer inherits our environment: hand nats-server the passwords as compose would.
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        server.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("user", perms.USERS)
async def test_every_user_logs_in_with_its_compose_password(
    compose_nats: NatsServer, user: str
) -> None:
    nats_env = compose()["services"]["nats"]["environment"]
    password = compose_default(nats_env[perms.password_env_var(user)])[1]
    settings = ServiceSettings(NATS_URL=compose_nats.url, nats_user=user, nats_password=password)
    nc = await nats.connect(**connect_options(settings, "compose-check"))
    try:
        # A discovery ping: no one answers here, but the round trip proves login and inbox.
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request("$SRV.PING.nobody", b"", timeout=1)
    finally:
        await nc.close()


def test_nats_server_refuses_to_start_without_a_password() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    done = subprocess.run(
        [nats_server_binary(), "-c", str(DEPLOYED_CONFIG), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "NATS_KEYSTORE_PASSWORD" in done.stdout + done.stderr
