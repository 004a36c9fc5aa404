"""A whole stack on a NATS of its own with authorization on, and logins to it as each user.

The session `stack` runs on the session's anonymous NATS, so these suites start their own:
one `Stack` for the module (its own NATS with users and permissions, its own database).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect_options
from byorouter_common.contracts import keystore as ks
from tests.conftest import create_database, drop_database


@pytest.fixture(scope="module")
def secured_stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Named .byorouter so the CLI run from its parent finds dev.json, as after `make run`.
    state_dir = tmp_path_factory.mktemp("secured") / ".byorouter"
    owned_database = create_database(database_url, "security")
    running = Stack(
        state_dir,
        database_url=owned_database,  # no nats_url: its own NATS, with users and permissions
        env_overrides={"BYOROUTER_LOG_LEVEL": "DEBUG", "BYOROUTER_LOG_FORMAT": "text"},
    ).start()
    try:
        yield running
    finally:
        running.stop()
        drop_database(database_url, owned_database)


@dataclass
class Login:
    """One connection as one NATS user, keeping what the server reported against it."""

    user: str
    nc: NatsClient
    violations: list[str] = field(default_factory=list)

    @property
    def bus(self) -> Bus:
        return Bus(self.nc, timeout_s=5.0)


async def login(stack: Stack, user: str) -> Login:
    """Connect to `stack`'s bus as `user`, with that user's password and inbox prefix."""
    options = connect_options(stack.nats_settings(user), f"security-tests-{user}")
    options["max_reconnect_attempts"] = 1
    options["allow_reconnect"] = False
    violations: list[str] = []

    async def on_error(error: Exception) -> None:
        # The server keeps the connection but says what it refused, as nats-py's error callback.
        violations.append(str(error))

    nc = await nats.connect(**options, error_cb=on_error)
    return Login(user, nc, violations)


@pytest.fixture(scope="module")
async def admin(secured_stack: Stack) -> AsyncIterator[Login]:
    session = await login(secured_stack, "admin")
    yield session
    await session.nc.close()


@dataclass(frozen=True)
class Tenant:
    app_api_key: str
    app_id: str
    connection_id: str
    provider_key: str


@pytest.fixture(scope="module")
async def tenant(secured_stack: Stack, admin: Login) -> Tenant:
    """An app with one connection to the fake upstream, created as an operator would (admin)."""
    app = await admin.bus.request(ks.APP_CREATE, ks.AppCreate(name="security tests"))
    provider_key = "sk-security-" + secrets.token_hex(16)
    connection = await admin.bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai",
                    api_key=SecretStr(provider_key),
                    base_url=secured_stack.upstream_base_url,
                )
            ],
        ),
    )
    return Tenant(
        app_api_key=app.app_api_key.get_secret_value(),
        app_id=app.app_id,
        connection_id=connection.connection_id,
        provider_key=provider_key,
    )
