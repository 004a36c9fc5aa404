"""A connection is stored at consent, before the app exchanges its code: if the code expires
unexchanged, the connection is revoked and its keys erased, and it can no longer chat.

The person's yes is sent to keystore as Connect sends it (`AUTHORIZE`), with a 1 s code; the
session stack's keystore purges every second.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import httpx
import psycopg
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.errors import ByoError
from tests.connect.conftest import Pkce, RegisteredApp, exchange

CODE_TTL_S = 1


async def consent(bus: Bus, stack: Stack, app: RegisteredApp, pkce: Pkce) -> cn.AuthorizationCode:
    return await bus.request(
        cn.AUTHORIZE,
        cn.AuthorizationGrant(
            client_id=app.client_id,
            redirect_uri=app.redirect_uris[0],
            code_challenge=pkce.challenge,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai",
                    api_key=SecretStr("sk-test-" + secrets.token_hex(16)),
                    base_url=stack.upstream_base_url,
                )
            ],
            code_ttl_s=CODE_TTL_S,
        ),
    )


async def chat(api: httpx.AsyncClient, app: RegisteredApp, connection_id: str) -> httpx.Response:
    return await api.post(
        "/v1/chat/completions",
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={**app.auth, "X-Byorouter-Connection": connection_id},
    )


def stored_credentials(stack: Stack, connection_id: str) -> int:
    url = make_url(stack.database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as db:
        row = db.execute(
            "SELECT count(*) FROM credentials WHERE connection_id = %s", (connection_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def connection_status(bus: Bus, app: RegisteredApp, connection_id: str) -> str:
    try:
        info = await bus.request(
            ks.CONNECTION_GET, ks.ConnectionRef(app_id=app.app_id, connection_id=connection_id)
        )
    except ByoError as exc:
        return f"refused {exc.status}"
    return info.status


async def test_a_connection_whose_code_expired_unexchanged_is_purged_with_its_keys(
    bus: Bus, stack: Stack, app: RegisteredApp, api: httpx.AsyncClient
) -> None:
    pkce = Pkce.new()
    granted = await consent(bus, stack, app, pkce)
    connection_id = granted.connection_id
    # Live until the code expires: whoever learns the connection id could chat with it.
    assert (await chat(api, app, connection_id)).status_code == 200
    assert stored_credentials(stack, connection_id) == 1

    deadline = time.monotonic() + CODE_TTL_S + 10
    while (status := await connection_status(bus, app, connection_id)) == "active":
        assert time.monotonic() < deadline, "connection still active after its code expired"
        await asyncio.sleep(0.2)

    assert status != "active"
    assert stored_credentials(stack, connection_id) == 0
    refused = await chat(api, app, connection_id)
    assert refused.status_code in (403, 404), refused.text
    assert refused.json()["error"]["message"]
    # The app coming late for the code gets nothing either.
    late = await exchange(api, app, granted.code.get_secret_value(), pkce.verifier)
    assert late.status_code == 400
    assert late.json()["error"]["code"] == "invalid_grant"


async def test_a_connection_whose_code_was_exchanged_in_time_stays(
    bus: Bus, stack: Stack, app: RegisteredApp, api: httpx.AsyncClient
) -> None:
    pkce = Pkce.new()
    granted = await consent(bus, stack, app, pkce)
    exchanged = await exchange(api, app, granted.code.get_secret_value(), pkce.verifier)
    assert exchanged.status_code == 200, exchanged.text

    await asyncio.sleep(CODE_TTL_S + 2.5)  # past expiry and more than one purge later
    assert await connection_status(bus, app, granted.connection_id) == "active"
    assert stored_credentials(stack, granted.connection_id) == 1
    assert (await chat(api, app, granted.connection_id)).status_code == 200
