"""Connections: keys are stored encrypted, shown masked, resolved only for the owning app."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from byorouter_common.bus import Bus
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.base import Endpoint
from byorouter_common.errors import ByoError
from tests.keystore.conftest import (
    EventListener,
    KeystoreProcess,
    new_app,
    new_connection,
    provider_key,
)

pytestmark = pytest.mark.usefixtures("keystore")

BY_CONNECTION_REF: tuple[Endpoint[ks.ConnectionRef, Any], ...] = (
    ks.CONNECTION_GET,
    ks.CREDENTIALS_RESOLVE,
    ks.CONNECTION_DELETE,
)


async def test_connection_shows_masked_labels_and_never_the_keys(bus: Bus, nc: NatsClient) -> None:
    app = await new_app(bus)
    openai_key, anthropic_key = provider_key("sk-proj-"), provider_key("sk-ant-")
    listener = await EventListener(events.CONNECTION_CHANGED).start(nc)
    try:
        created = await new_connection(bus, app.app_id, openai=openai_key, anthropic=anthropic_key)
        event = await listener.next(within_s=1.0)
    finally:
        await listener.stop()
    fetched = await bus.request(
        ks.CONNECTION_GET,
        ks.ConnectionRef(app_id=app.app_id, connection_id=created.connection_id),
    )

    assert (event.connection_id, event.app_id, event.deleted) == (
        created.connection_id,
        app.app_id,
        False,
    )
    assert created.connection_id.startswith("conn_")
    for info in (created, fetched):
        shown = info.model_dump_json()
        assert openai_key not in shown
        assert anthropic_key not in shown
        assert [(p.provider, p.label, p.priority) for p in info.providers] == [
            ("openai", f"sk-...{openai_key[-4:]}", 0),
            ("anthropic", f"sk-...{anthropic_key[-4:]}", 1),
        ]
        assert info.status == "active"


async def test_a_short_keys_label_shows_none_of_the_key(bus: Bus, db: AsyncEngine) -> None:
    app = await new_app(bus)
    # Under 16 characters: even four of them would give away a quarter of the key.
    openai_key, selfhosted_key = "sk-Zq81xkAbCd", "lan-Zq81xk"
    created = await new_connection(bus, app.app_id, openai=openai_key, selfhosted=selfhosted_key)
    fetched = await bus.request(
        ks.CONNECTION_GET,
        ks.ConnectionRef(app_id=app.app_id, connection_id=created.connection_id),
    )
    async with db.connect() as conn:
        stored = (
            await conn.scalars(
                text("SELECT label FROM credentials WHERE connection_id = :c ORDER BY priority"),
                {"c": created.connection_id},
            )
        ).all()

    for labels in ([p.label for p in created.providers], [p.label for p in fetched.providers]):
        assert labels == ["sk-...", "****"]
    assert list(stored) == ["sk-...", "****"]


async def test_resolve_gives_the_owner_its_plaintext_keys_in_priority_order(bus: Bus) -> None:
    app = await new_app(bus)
    openrouter_key, selfhosted_key = provider_key("sk-or-"), provider_key("local-")
    created = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            fallback_to_default=True,
            providers=[
                ks.ProviderCredentialInput(
                    provider="selfhosted",
                    api_key=SecretStr(selfhosted_key),
                    base_url="https://gpu.example:8443/v1",
                    preferred_model="llama3",
                ),
                ks.ProviderCredentialInput(
                    provider="openrouter",
                    api_key=SecretStr(openrouter_key),
                    preferred_model="meta-llama/llama-3-70b",
                ),
            ],
        ),
    )

    resolved = await bus.request(
        ks.CREDENTIALS_RESOLVE,
        ks.ConnectionRef(app_id=app.app_id, connection_id=created.connection_id),
    )

    assert resolved.fallback_to_default is True
    assert [
        (
            p.provider,
            p.api_key.get_secret_value() if p.api_key else None,
            p.base_url,
            p.preferred_model,
            p.priority,
        )
        for p in resolved.providers
    ] == [
        ("selfhosted", selfhosted_key, "https://gpu.example:8443/v1", "llama3", 0),
        ("openrouter", openrouter_key, None, "meta-llama/llama-3-70b", 1),
    ]


async def test_selfhosted_provider_without_a_key_resolves_with_no_key(bus: Bus) -> None:
    app = await new_app(bus)
    created = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="selfhosted", base_url="http://127.0.0.1:11434/v1"
                )
            ],
        ),
    )
    ref = ks.ConnectionRef(app_id=app.app_id, connection_id=created.connection_id)

    resolved = await bus.request(ks.CREDENTIALS_RESOLVE, ref)

    assert created.providers[0].label is None
    assert resolved.providers[0].api_key is None


async def test_another_apps_connection_is_the_same_404_as_a_missing_one(bus: Bus) -> None:
    owner, stranger = await new_app(bus), await new_app(bus)
    key = provider_key()
    created = await new_connection(bus, owner.app_id, openai=key)
    theirs = ks.ConnectionRef(app_id=stranger.app_id, connection_id=created.connection_id)
    missing = ks.ConnectionRef(app_id=owner.app_id, connection_id="conn_" + "0" * 24)

    for endpoint in BY_CONNECTION_REF:
        answers = []
        for ref in (theirs, missing):
            with pytest.raises(ByoError) as err:
                await bus.request(endpoint, ref)
            answers.append(err.value.envelope())
        assert answers[0] == answers[1]
        assert answers[0]["error"]["status"] == 404
        assert answers[0]["error"]["code"] == "connection_not_found"

    # The stranger's delete attempt changed nothing for the owner.
    resolved = await bus.request(
        ks.CREDENTIALS_RESOLVE,
        ks.ConnectionRef(app_id=owner.app_id, connection_id=created.connection_id),
    )
    assert resolved.providers[0].api_key is not None
    assert resolved.providers[0].api_key.get_secret_value() == key


async def test_stored_rows_hold_no_key_bytes(bus: Bus, db: AsyncEngine) -> None:
    app = await new_app(bus)
    key = provider_key("sk-proj-")
    created = await new_connection(bus, app.app_id, openai=key)

    async with db.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT label, ciphertext, wrapped_dek, base_url, preferred_model "
                    "FROM credentials WHERE connection_id = :c"
                ),
                {"c": created.connection_id},
            )
        ).all()
        audit = (
            (
                await conn.execute(
                    text("SELECT detail::text FROM audit_log WHERE subject_id = :c"),
                    {"c": created.connection_id},
                )
            )
            .scalars()
            .all()
        )

    assert len(rows) == 1
    stored = b"".join(
        bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in rows[0]
    )
    # Neither the key nor any 8-byte piece of it is stored in clear.
    raw = key.encode()
    assert all(raw[i : i + 8] not in stored for i in range(len(raw) - 7))
    assert audit
    assert all(key not in entry for entry in audit)


async def test_credential_copied_to_another_connection_or_provider_does_not_decrypt(
    bus: Bus, db: AsyncEngine, keystore: KeystoreProcess
) -> None:
    app = await new_app(bus)
    victim_key, attacker_key = provider_key("sk-proj-"), provider_key("sk-proj-")
    victim = await new_connection(
        bus, app.app_id, openai=victim_key, anthropic=provider_key("sk-ant-")
    )
    attacker = await new_connection(bus, app.app_id, openai=attacker_key)

    async def copy_secret(
        src_connection: str, src_provider: str, dst_connection: str, dst_provider: str
    ) -> None:
        async with db.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE credentials AS dst SET kek_version = src.kek_version, "
                    "wrapped_dek = src.wrapped_dek, ciphertext = src.ciphertext "
                    "FROM credentials AS src WHERE src.connection_id = :sc "
                    "AND src.provider = :sp AND dst.connection_id = :dc AND dst.provider = :dp"
                ),
                {
                    "sc": src_connection,
                    "sp": src_provider,
                    "dc": dst_connection,
                    "dp": dst_provider,
                },
            )

    try:
        await copy_secret(victim.connection_id, "openai", attacker.connection_id, "openai")
        await copy_secret(victim.connection_id, "openai", victim.connection_id, "anthropic")
        for connection_id in (attacker.connection_id, victim.connection_id):
            with pytest.raises(ByoError) as err:
                await bus.request(
                    ks.CREDENTIALS_RESOLVE,
                    ks.ConnectionRef(app_id=app.app_id, connection_id=connection_id),
                )
            assert (err.value.status, err.value.code) == (500, "credential_undecryptable")
            body = str(err.value.envelope())
            assert victim_key not in body
            assert attacker_key not in body
        assert victim_key not in keystore.log_text()
    finally:
        # Tampered rows would block later key rotations from finishing cleanly: erase them.
        for connection_id in (attacker.connection_id, victim.connection_id):
            await bus.request(
                ks.CONNECTION_DELETE,
                ks.ConnectionRef(app_id=app.app_id, connection_id=connection_id),
            )


async def test_delete_erases_the_keys_and_the_connection_is_gone_afterwards(
    bus: Bus, db: AsyncEngine, nc: NatsClient
) -> None:
    app = await new_app(bus)
    created = await new_connection(
        bus, app.app_id, openai=provider_key(), anthropic=provider_key("sk-ant-")
    )
    ref = ks.ConnectionRef(app_id=app.app_id, connection_id=created.connection_id)
    listener = await EventListener(events.CONNECTION_CHANGED).start(nc)
    try:
        deleted = await bus.request(ks.CONNECTION_DELETE, ref)
        event = await listener.next(within_s=1.0)
    finally:
        await listener.stop()

    assert deleted.deleted is True
    assert (event.connection_id, event.deleted) == (created.connection_id, True)
    async with db.connect() as conn:
        remaining = await conn.scalar(
            text("SELECT count(*) FROM credentials WHERE connection_id = :c"),
            {"c": created.connection_id},
        )
        status = await conn.scalar(
            text("SELECT status FROM connections WHERE id = :c"), {"c": created.connection_id}
        )
    assert (remaining, status) == (0, "revoked")
    for endpoint in BY_CONNECTION_REF:
        with pytest.raises(ByoError) as err:
            await bus.request(endpoint, ref)
        assert err.value.code == "connection_not_found"


@pytest.mark.parametrize(
    ("provider", "api_key", "base_url", "param"),
    [
        ("openai", None, None, "providers[0].api_key"),
        ("anthropic", "   ", None, "providers[0].api_key"),
        ("selfhosted", "local-secret-Zq81xk", None, "providers[0].base_url"),
        ("selfhosted", None, "ftp://gpu.example/v1", "providers[0].base_url"),
        ("selfhosted", None, "gpu.example/v1", "providers[0].base_url"),
        ("selfhosted", None, "http://admin:hunter2-Zq81xk@gpu.example/v1", "providers[0].base_url"),
        # A key in the query string or fragment would be stored and shown in the clear.
        ("selfhosted", None, "https://gpu.example/v1?api_key=Zq81xk", "providers[0].base_url"),
        ("selfhosted", None, "https://gpu.example/v1?Zq81xk", "providers[0].base_url"),
        ("selfhosted", None, "https://gpu.example/v1#token=Zq81xk", "providers[0].base_url"),
        ("openai", "sk-Zq81xk", "https://api.example/v1?key=Zq81xk", "providers[0].base_url"),
    ],
)
async def test_unusable_provider_settings_are_refused_without_echoing_them(
    bus: Bus, provider: str, api_key: str | None, base_url: str | None, param: str
) -> None:
    app = await new_app(bus)
    request = ks.ConnectionCreate(
        app_id=app.app_id,
        providers=[
            ks.ProviderCredentialInput(
                provider=provider,
                api_key=SecretStr(api_key) if api_key is not None else None,
                base_url=base_url,
            )
        ],
    )

    with pytest.raises(ByoError) as err:
        await bus.request(ks.CONNECTION_CREATE, request)

    assert (err.value.status, err.value.param) == (400, param)
    body = str(err.value.envelope())
    assert "Zq81xk" not in body
    assert base_url is None or base_url not in body


async def test_a_base_url_carrying_a_secret_is_refused_saying_why_and_nothing_is_stored(
    bus: Bus, db: AsyncEngine
) -> None:
    app = await new_app(bus)
    secret = provider_key("sk-proj-")
    for base_url in (
        f"https://gpu.example/v1?api_key={secret}",
        f"https://user:{secret}@gpu.example/v1",
        f"https://gpu.example/v1#{secret}",
    ):
        request = ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[ks.ProviderCredentialInput(provider="selfhosted", base_url=base_url)],
        )
        with pytest.raises(ByoError) as err:
            await bus.request(ks.CONNECTION_CREATE, request)

        assert (err.value.status, err.value.param) == (400, "providers[0].base_url")
        assert "query string" in err.value.message
        body = str(err.value.envelope())
        assert secret not in body
        assert secret[-8:] not in body
        assert "gpu.example" not in body
    async with db.connect() as conn:
        count = await conn.scalar(
            text(
                "SELECT count(*) FROM credentials c JOIN connections n ON n.id = c.connection_id "
                "WHERE n.app_id = :a"
            ),
            {"a": app.app_id},
        )
    assert count == 0


async def test_a_plain_base_url_with_a_path_and_port_is_kept_as_given(bus: Bus) -> None:
    app = await new_app(bus)
    base_url = "https://gpu.example:8443/openai/v1"
    created = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[ks.ProviderCredentialInput(provider="selfhosted", base_url=base_url)],
        ),
    )

    assert created.providers[0].base_url == base_url


async def test_malformed_requests_get_a_400_envelope_that_does_not_echo_them(
    nc: NatsClient,
) -> None:
    secret = provider_key("sk-proj-")
    payloads = [
        b'{"app_id": "app_x", "providers": [{"provider": "openai", "api_key": "'
        + secret.encode()
        + b'", "extra": 1}]}',
        b'{"app_id": "app_x", "providers": [{"provider": "nope", "api_key": "'
        + secret.encode()
        + b'"}]}',
        b'{"app_id": "app_x", "providers": "' + secret.encode() + b'"}',
        b"not json " + secret.encode(),
    ]
    for payload in payloads:
        reply = await nc.request(ks.CONNECTION_CREATE.subject, payload, timeout=5)
        error = ByoError.from_json(reply.data)
        assert (reply.headers or {}).get("Byo-Kind") == "error"
        assert error.status == 400
        assert secret not in reply.data.decode()
        assert secret[-12:] not in reply.data.decode()


async def test_connection_for_an_unknown_app_is_refused(bus: Bus) -> None:
    with pytest.raises(ByoError) as err:
        await new_connection(bus, "app_" + "0" * 20, openai=provider_key())
    assert (err.value.status, err.value.code) == (404, "app_not_found")
