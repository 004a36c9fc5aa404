"""Credentials are cached per connection and dropped the moment keystore says they changed."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from byorouter_common.bus import Bus
from byorouter_common.contracts import events
from byorouter_fakes.openai import FakeOpenAI
from nats.aio.client import Client as NatsClient

from tests.router.router_client import KeystoreStub, chat, provider

BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]}


async def test_repeated_requests_ask_keystore_once(
    bus: Bus, keystore: KeystoreStub, upstream: FakeOpenAI
) -> None:
    ref = keystore.add([provider("openai", upstream.base_url, "sk-a-" + secrets.token_hex(8))])
    for _ in range(3):
        assert (await chat(bus, ref, BODY)).kinds == ["start", "result"]
    assert keystore.lookups[ref.connection_id] == 1


async def test_concurrent_first_requests_share_one_keystore_lookup(
    bus: Bus, keystore: KeystoreStub, upstream: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keystore, "delay_s", 0.1)
    ref = keystore.add([provider("openai", upstream.base_url, "sk-b-" + secrets.token_hex(8))])
    answers = await asyncio.gather(*(chat(bus, ref, BODY) for _ in range(8)))
    assert all(a.kinds == ["start", "result"] for a in answers)
    assert keystore.lookups[ref.connection_id] == 1


async def test_changed_connection_uses_its_new_key_at_once(
    bus: Bus, client_nc: NatsClient, keystore: KeystoreStub, upstream: FakeOpenAI
) -> None:
    old_key, new_key = "sk-old-" + secrets.token_hex(8), "sk-new-" + secrets.token_hex(8)
    ref = keystore.add([provider("openai", upstream.base_url, old_key)])
    tag = "rotate-" + secrets.token_hex(6)
    await chat(bus, ref, {**BODY, "user": tag})
    keystore.connections[ref.connection_id] = keystore.connections[ref.connection_id].model_copy(
        update={"providers": [provider("openai", upstream.base_url, new_key)]}
    )
    await client_nc.publish(
        events.CONNECTION_CHANGED.subject,
        events.ConnectionChangedEvent(connection_id=ref.connection_id, app_id=ref.app_id)
        .model_dump_json()
        .encode(),
    )
    await client_nc.flush()
    # The event and the next request travel different paths; give the event a moment.
    for _ in range(50):
        await chat(bus, ref, {**BODY, "user": tag})
        if upstream.requests(tag)[-1]["headers"]["Authorization"] == f"Bearer {new_key}":
            break
        await asyncio.sleep(0.02)
    seen = [r["headers"]["Authorization"] for r in upstream.requests(tag)]
    assert seen[0] == f"Bearer {old_key}"
    assert seen[-1] == f"Bearer {new_key}"
    assert keystore.lookups[ref.connection_id] == 2
