"""Least privilege on the bus, checked with real logins to a real NATS enforcing it.

Only `router` may ask keystore for decrypted provider keys; everyone else's request is refused
by the server before keystore sees it, nobody but the asker can read the reply, and a
connection without a login is turned away. The chat path works unchanged with all this on.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import nats.errors
import openai
import pytest
from nats.aio.msg import Msg

from byorouter_cli.dev.stack import Stack
from byorouter_common.contracts import Empty, events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import router as rt
from byorouter_common.errors import ByoError
from tests.security.conftest import Login, Tenant, login

RESOLVE = ks.CREDENTIALS_RESOLVE.subject
NOT_ROUTER = ("gateway", "connect", "tunnel", "keystore", "admin")
_SCRIPT = Path(sys.executable).with_name("byorouter")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "byorouter_cli.main"]


def ref(tenant: Tenant) -> ks.ConnectionRef:
    return ks.ConnectionRef(app_id=tenant.app_id, connection_id=tenant.connection_id)


async def reported(session: Login, subject: str, within_s: float = 1.0) -> bool:
    """True once the server has reported a permissions violation about `subject`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if any("permissions violation" in v and subject in v for v in session.violations):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_router_gets_the_decrypted_provider_key(secured_stack: Stack, tenant: Tenant) -> None:
    router = await login(secured_stack, "router")
    try:
        resolved = await router.bus.request(ks.CREDENTIALS_RESOLVE, ref(tenant))
    finally:
        await router.nc.close()
    assert [p.api_key.get_secret_value() for p in resolved.providers if p.api_key] == [
        tenant.provider_key
    ]
    assert router.violations == []


@pytest.mark.parametrize("user", NOT_ROUTER)
async def test_no_one_but_router_may_ask_for_decrypted_keys(
    secured_stack: Stack, tenant: Tenant, user: str
) -> None:
    session = await login(secured_stack, user)
    try:
        # As a service would call it: the server drops the request, so it ends in a 504.
        with pytest.raises(ByoError) as refused:
            await session.bus.request(ks.CREDENTIALS_RESOLVE, ref(tenant), timeout_s=1.0)
        assert refused.value.status == 504
        assert await reported(session, RESOLVE)
        # And by hand, listening on the reply inbox: nothing at all comes back.
        inbox = session.nc.new_inbox()
        replies = await session.nc.subscribe(inbox)
        await session.nc.publish(RESOLVE, ref(tenant).model_dump_json().encode(), reply=inbox)
        with pytest.raises(nats.errors.TimeoutError):
            await replies.next_msg(timeout=1.0)
    finally:
        await session.nc.close()


async def test_no_one_else_can_read_the_replies_router_gets(
    secured_stack: Stack, tenant: Tenant
) -> None:
    snoop = await login(secured_stack, "gateway")
    overheard: list[bytes] = []

    async def listen(msg: Msg) -> None:
        overheard.append(msg.data)

    router = await login(secured_stack, "router")
    try:
        # Every inbox, and router's in particular: the server refuses both subscriptions.
        await snoop.nc.subscribe("_INBOX.>", cb=listen)
        await snoop.nc.subscribe("_INBOX.router.>", cb=listen)
        await snoop.nc.flush()
        assert await reported(snoop, "_inbox.>")
        assert await reported(snoop, "_inbox.router.>")
        resolved = await router.bus.request(ks.CREDENTIALS_RESOLVE, ref(tenant))
        assert resolved.providers
        await asyncio.sleep(0.2)  # anything routed to the snoop would have arrived by now
    finally:
        await router.nc.close()
        await snoop.nc.close()
    assert overheard == []


@pytest.mark.parametrize("user", ["gateway", "router", "connect", "tunnel"])
async def test_only_keystore_may_announce_changes(secured_stack: Stack, user: str) -> None:
    """A forged `app_key.revoked` would let a service lock apps out of every gateway copy."""
    session = await login(secured_stack, user)
    try:
        event = events.AppKeyRevokedEvent(key_id="key_forged", app_id="app_forged")
        await session.bus.publish_event(events.APP_KEY_REVOKED, event)
        await session.nc.flush()
        assert await reported(session, events.APP_KEY_REVOKED.subject)
    finally:
        await session.nc.close()


async def test_the_gateway_cannot_create_connections_or_rotate_keys(
    secured_stack: Stack,
) -> None:
    gateway = await login(secured_stack, "gateway")
    try:
        for subject in (ks.CONNECTION_CREATE.subject, ks.KEYS_ROTATE.subject):
            with pytest.raises(nats.errors.TimeoutError):
                await gateway.nc.request(subject, b"{}", timeout=0.5)
            assert await reported(gateway, subject)
    finally:
        await gateway.nc.close()


async def test_a_connection_without_a_login_is_refused(secured_stack: Stack) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured_stack.nats_url, allow_reconnect=False, max_reconnect_attempts=1)


async def test_a_wrong_password_is_refused(secured_stack: Stack) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            secured_stack.nats_url,
            user="router",
            password="not-the-password",
            allow_reconnect=False,
            max_reconnect_attempts=1,
        )


async def test_admin_can_run_the_operator_endpoints(admin: Login, tenant: Tenant) -> None:
    status = await admin.bus.request(ks.KEYS_STATUS, Empty())
    assert status.active_version >= 1
    models = await admin.bus.request(rt.MODELS, ref(tenant))
    assert any(model.id.startswith("openai/") for model in models.data)
    assert admin.violations == []


async def test_a_refused_call_does_not_break_the_callers_connection(
    secured_stack: Stack, tenant: Tenant
) -> None:
    connect = await login(secured_stack, "connect")
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await connect.nc.request(RESOLVE, ref(tenant).model_dump_json().encode(), 0.5)
        info = await connect.bus.request(ks.CONNECTION_GET, ref(tenant))
    finally:
        await connect.nc.close()
    assert info.connection_id == tenant.connection_id
    assert all(p.label is None or tenant.provider_key not in p.label for p in info.providers)


# --- the product still works with the bus locked down ---------------------------------------


def sdk(stack: Stack, tenant: Tenant) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=stack.gateway_url + "/v1",
        api_key=tenant.app_api_key,
        default_headers={"X-Byorouter-Connection": tenant.connection_id},
        max_retries=0,
    )


async def chat_once(stack: Stack, tenant: Tenant, text: str) -> str:
    completion = await sdk(stack, tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )
    return completion.choices[0].message.content or ""


async def test_chat_completion_works_through_the_gateway(
    secured_stack: Stack, tenant: Tenant
) -> None:
    assert "hello locked bus" in await chat_once(secured_stack, tenant, "hello locked bus")


async def test_streamed_chat_completion_works_through_the_gateway(
    secured_stack: Stack, tenant: Tenant
) -> None:
    stream = await sdk(secured_stack, tenant).chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
    )
    deltas = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "one two three four" in "".join(deltas)
    assert len([d for d in deltas if d]) > 1


async def test_models_and_connection_pages_work_through_the_gateway(
    secured_stack: Stack, tenant: Tenant
) -> None:
    headers = {
        "Authorization": f"Bearer {tenant.app_api_key}",
        "X-Byorouter-Connection": tenant.connection_id,
    }
    async with httpx.AsyncClient(base_url=secured_stack.gateway_url, timeout=10) as http:
        models = await http.get("/v1/models", headers=headers)
        connection = await http.get(f"/v1/connections/{tenant.connection_id}", headers=headers)
        ready = await http.get("/readyz")
    assert models.status_code == 200, models.text
    assert any(m["id"].startswith("openai/") for m in models.json()["data"])
    assert connection.status_code == 200, connection.text
    assert ready.status_code == 200, ready.text


async def test_services_log_no_permissions_violation(secured_stack: Stack, tenant: Tenant) -> None:
    """What the services do on their own (serve, call, answer discovery) stays within bounds."""
    await chat_once(secured_stack, tenant, "anything")
    secured_stack.flush_logs()
    for name in ("keystore", "router", "gateway", "connect", "tunnel"):
        lines = secured_stack.log_lines(name)
        assert not [line for line in lines if "ermissions violation" in line], name


async def test_usage_is_recorded_with_the_bus_locked_down(
    secured_stack: Stack, tenant: Tenant
) -> None:
    """Router publishes to the usage stream and keystore consumes it within their permissions."""
    headers = {"Authorization": f"Bearer {tenant.app_api_key}"}
    async with httpx.AsyncClient(base_url=secured_stack.gateway_url, timeout=10) as http:
        before = await http.get(f"/v1/connections/{tenant.connection_id}/usage", headers=headers)
        counted = sum(row["requests"] for row in before.json()["data"])
        await chat_once(secured_stack, tenant, "count me")
        deadline = time.monotonic() + 10
        while True:
            now = await http.get(f"/v1/connections/{tenant.connection_id}/usage", headers=headers)
            if sum(row["requests"] for row in now.json()["data"]) > counted:
                break
            assert time.monotonic() < deadline, now.text
            await asyncio.sleep(0.1)


async def test_the_gateway_cannot_take_usage_reports_from_keystore(secured_stack: Stack) -> None:
    session = await login(secured_stack, "gateway")
    subject = f"$JS.API.CONSUMER.MSG.NEXT.{events.USAGE_STREAM.name}.{events.USAGE_RECORDER.name}"
    try:
        await session.nc.publish(subject, b'{"batch": 1}', reply=session.nc.new_inbox())
        # nats-py reports the refused subject in lower case.
        assert await reported(session, subject.lower()), session.violations
    finally:
        await session.nc.close()


# --- who knows which password ---------------------------------------------------------------


def test_passwords_are_readable_by_their_owner_only(secured_stack: Stack) -> None:
    for private in (
        secured_stack.nats_users_file,
        secured_stack.nats_config_file,
        secured_stack.dev_file,
    ):
        assert private.stat().st_mode & 0o077 == 0, private.name


def test_the_cli_logs_in_as_admin_and_never_learns_the_router_password(
    secured_stack: Stack,
) -> None:
    recorded = json.loads(secured_stack.dev_file.read_text())
    passwords = json.loads(secured_stack.nats_users_file.read_text())
    assert recorded["nats_user"] == "admin"
    assert passwords["router"] not in secured_stack.dev_file.read_text()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "BYOROUTER_NATS_USER", "BYOROUTER_NATS_PASSWORD")
    }
    done = subprocess.run(
        [*CLI, "keys", "status", "--json"],
        cwd=secured_stack.state_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["active_version"] >= 1


def test_the_cli_without_a_login_is_told_how_to_log_in(
    secured_stack: Stack, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOROUTER_NATS_")}
    env["NATS_URL"] = secured_stack.nats_url
    done = subprocess.run(
        [*CLI, "keys", "status", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert json.loads(done.stdout)["error"]["code"] == "nats_login_refused"
    assert "BYOROUTER_NATS_USER" in done.stderr
