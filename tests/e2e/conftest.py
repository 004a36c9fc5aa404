"""Helpers for tests that drive the whole stack like an app would.

Each test that needs its own app or connection creates it through keystore on the real bus, the
same path `byorouter app create` / `byorouter connection create` use.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from byorouter_common.bus import Bus, connect
from byorouter_common.contracts import keystore as ks
from byorouter_common.settings import ServiceSettings


@dataclass(frozen=True)
class AppWithConnection:
    client_id: str
    app_id: str
    app_api_key: str
    connection_id: str
    provider_key: str


@pytest.fixture(scope="session")
async def bus(stack: Any) -> AsyncIterator[Bus]:
    nc = await connect(ServiceSettings(NATS_URL=stack.nats_url), "e2e-tests")
    yield Bus(nc)
    await nc.close()


async def create_app_with_connection(
    bus: Bus, upstream_base_url: str, *, provider_key: str | None = None, name: str = "e2e app"
) -> AppWithConnection:
    app = await bus.request(
        ks.APP_CREATE, ks.AppCreate(name=name, redirect_uris=["http://localhost:3000/cb"])
    )
    key = provider_key or "sk-test-" + secrets.token_hex(16)
    conn = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai", api_key=SecretStr(key), base_url=upstream_base_url
                )
            ],
        ),
    )
    return AppWithConnection(
        client_id=app.client_id,
        app_id=app.app_id,
        app_api_key=app.app_api_key.get_secret_value(),
        connection_id=conn.connection_id,
        provider_key=key,
    )


@pytest.fixture
async def tenant(bus: Bus, stack: Any) -> AppWithConnection:
    """A fresh app with one connection whose provider is the fake OpenAI upstream."""
    return await create_app_with_connection(bus, stack.upstream_base_url)


def sdk_client(stack: Any, tenant: AppWithConnection, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=stack.gateway_url + "/v1",
        api_key=tenant.app_api_key,
        default_headers={"X-Byorouter-Connection": tenant.connection_id},
        max_retries=0,
        **kwargs,
    )


async def upstream_requests(stack: Any, tag: str) -> list[dict[str, Any]]:
    """What the fake upstream received for requests tagged with `tag` (the `user` field)."""
    async with httpx.AsyncClient() as client:
        response = await client.get(stack.upstream_url + "/_fake/requests", params={"tag": tag})
        response.raise_for_status()
        data: list[dict[str, Any]] = response.json()
        return data
