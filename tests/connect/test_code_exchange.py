"""POST /v1/oauth/token: codes are single-use, short-lived, hashed, bound to app, URI and PKCE."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from tests.connect.conftest import (
    Pkce,
    RegisteredApp,
    confirm_manage_link,
    connect_keys,
    exchange,
    openai_fields,
    register_app,
)


def database(stack: Stack) -> psycopg.Connection[Any]:
    url = make_url(stack.database_url).set(drivername="postgresql")
    return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)


async def issue_code(
    browser: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> tuple[str, Pkce, str]:
    """A person connected a key: (code, its PKCE pair, the key)."""
    pkce = Pkce.new()
    key = "sk-test-" + secrets.token_hex(16)
    code = await connect_keys(browser, app, pkce, openai_fields(stack, key))
    return code, pkce, key


def assert_invalid_grant(answer: httpx.Response) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_grant"


async def test_a_code_is_long_random_stored_only_as_its_hash_and_lives_at_most_ten_minutes(
    browser: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    code, _, _ = await issue_code(browser, stack, app)

    with database(stack) as db:
        rows = db.execute(
            "SELECT code_hash, code_challenge, expires_at - created_at FROM auth_codes "
            "WHERE app_id = %s",
            (app.app_id,),
        ).fetchall()

    assert len(code) >= 43  # 256 bits from `secrets`, base64url
    assert len(rows) == 1
    code_hash, challenge, lifetime = rows[0]
    assert bytes(code_hash) == hashlib.sha256(code.encode()).digest()
    assert code not in repr(rows)
    assert challenge  # a code without a PKCE challenge cannot exist
    assert 0 < lifetime.total_seconds() <= 600


async def test_an_expired_code_is_refused(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    code, pkce, _ = await issue_code(browser, stack, app)
    with database(stack) as db:
        db.execute(
            "UPDATE auth_codes SET expires_at = now() - interval '1 second' WHERE code_hash = %s",
            (hashlib.sha256(code.encode()).digest(),),
        )

    assert_invalid_grant(await exchange(api, app, code, pkce.verifier))


def backdate_exchange(stack: Stack, code: str, seconds: int) -> None:
    """Pretend the code's successful exchange happened `seconds` earlier."""
    with database(stack) as db:
        db.execute(
            "UPDATE auth_codes SET exchanged_at = exchanged_at - make_interval(secs => %s) "
            "WHERE code_hash = %s",
            (seconds, hashlib.sha256(code.encode()).digest()),
        )


async def test_a_code_works_once_and_its_reuse_revokes_the_connection(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    code, pkce, _ = await issue_code(browser, stack, app)
    first = await exchange(api, app, code, pkce.verifier)
    connection_id = first.json()["connection_id"]
    assert (await api.get(f"/v1/connections/{connection_id}", headers=app.auth)).status_code == 200
    backdate_exchange(stack, code, 61)  # past the window in which a retry is answered again

    again = await exchange(api, app, code, pkce.verifier)

    assert_invalid_grant(again)
    gone = await api.get(f"/v1/connections/{connection_id}", headers=app.auth)
    assert gone.status_code == 404


async def test_a_retried_exchange_within_a_minute_gets_the_same_connection_again(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    # The app's first answer can be lost on the way back: its retry must not cost the user
    # their keys.
    code, pkce, _ = await issue_code(browser, stack, app)
    first = await exchange(api, app, code, pkce.verifier)
    assert first.status_code == 200, first.text

    again = await exchange(api, app, code, pkce.verifier)

    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    connection_id = first.json()["connection_id"]
    assert (await api.get(f"/v1/connections/{connection_id}", headers=app.auth)).status_code == 200


async def test_a_different_verifier_after_the_exchange_still_revokes_the_connection(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    code, pkce, _ = await issue_code(browser, stack, app)
    connection_id = (await exchange(api, app, code, pkce.verifier)).json()["connection_id"]

    assert_invalid_grant(await exchange(api, app, code, Pkce.new().verifier))

    gone = await api.get(f"/v1/connections/{connection_id}", headers=app.auth)
    assert gone.status_code == 404
    assert_invalid_grant(await exchange(api, app, code, pkce.verifier))


async def test_concurrent_exchanges_of_one_code_all_get_the_one_connection(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    code, pkce, _ = await issue_code(browser, stack, app)

    answers = await asyncio.gather(*(exchange(api, app, code, pkce.verifier) for _ in range(5)))

    assert [a.status_code for a in answers] == [200] * 5
    assert len({a.json()["connection_id"] for a in answers}) == 1


async def test_another_apps_key_cannot_exchange_a_code(
    browser: httpx.AsyncClient,
    api: httpx.AsyncClient,
    stack: Stack,
    app: RegisteredApp,
    bus: Bus,
) -> None:
    code, pkce, _ = await issue_code(browser, stack, app)
    other = await register_app(bus, name="Another app")

    stolen = await exchange(api, other, code, pkce.verifier, redirect_uri=app.redirect_uris[0])

    assert_invalid_grant(stolen)
    # The other app's attempt did not spend the code: its own app still gets the connection.
    assert (await exchange(api, app, code, pkce.verifier)).status_code == 200


async def test_a_wrong_code_verifier_is_refused_and_spends_the_code(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    code, pkce, _ = await issue_code(browser, stack, app)

    assert_invalid_grant(await exchange(api, app, code, Pkce.new().verifier))
    assert_invalid_grant(await exchange(api, app, code, pkce.verifier))


async def test_a_code_needs_its_verifier(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    code, _, _ = await issue_code(browser, stack, app)
    answer = await api.post(
        "/v1/oauth/token",
        json={"code": code, "redirect_uri": app.redirect_uris[0]},
        headers=app.auth,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_request"
    assert "code_verifier" in answer.json()["error"]["message"]


async def test_the_redirect_uri_must_be_the_one_the_code_was_issued_for(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, bus: Bus
) -> None:
    app = await register_app(bus, "http://localhost:3000/a", "http://localhost:3000/b")
    code, pkce, _ = await issue_code(browser, stack, app)

    answer = await exchange(api, app, code, pkce.verifier, redirect_uri="http://localhost:3000/b")

    assert_invalid_grant(answer)


async def test_token_responses_are_never_cached(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    code, pkce, _ = await issue_code(browser, stack, app)
    success = await exchange(api, app, code, pkce.verifier)
    failure = await exchange(api, app, code, pkce.verifier)

    for answer in (success, failure):
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["pragma"] == "no-cache"


async def test_a_form_encoded_token_request_works_as_oauth_libraries_send_it(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    code, pkce, _ = await issue_code(browser, stack, app)
    answer = await api.post(
        "/v1/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": app.redirect_uris[0],
            "code_verifier": pkce.verifier,
        },
        headers=app.auth,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["connection_id"].startswith("conn_")


@pytest.mark.parametrize("grant_type", ["client_credentials", "refresh_token"])
async def test_only_the_authorization_code_grant_is_accepted(
    api: httpx.AsyncClient, app: RegisteredApp, grant_type: str
) -> None:
    answer = await exchange(api, app, "x" * 43, Pkce.new().verifier, grant_type=grant_type)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "unsupported_grant_type"


async def test_an_exchange_needs_the_apps_key(api: httpx.AsyncClient, app: RegisteredApp) -> None:
    answer = await api.post(
        "/v1/oauth/token", json={"code": "x", "redirect_uri": "y", "code_verifier": "z" * 43}
    )
    assert answer.status_code == 401
    assert answer.headers["cache-control"] == "no-store"


async def test_failed_exchanges_are_rate_limited_per_app(api: httpx.AsyncClient, bus: Bus) -> None:
    app = await register_app(bus, name="Guesser")
    verifier = Pkce.new().verifier
    guesses = [await exchange(api, app, secrets.token_urlsafe(32), verifier) for _ in range(10)]
    assert {g.status_code for g in guesses} == {400}

    limited = await exchange(api, app, secrets.token_urlsafe(32), verifier)

    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["cache-control"] == "no-store"
    # Another app is not slowed down by this one's guessing.
    other = await register_app(bus, name="Innocent")
    assert (await exchange(api, other, secrets.token_urlsafe(32), verifier)).status_code == 400


async def test_an_error_never_echoes_the_submitted_code_or_verifier(
    api: httpx.AsyncClient, app: RegisteredApp
) -> None:
    code = "sk-" + secrets.token_hex(20)
    verifier = "bad verifier " + secrets.token_hex(20)
    answers = [
        await exchange(api, app, code, verifier),
        await exchange(api, app, code, Pkce.new().verifier),
        await api.post(
            "/v1/oauth/token",
            content=b'{"code": ["' + code.encode() + b'"]',
            headers={**app.auth, "Content-Type": "application/json"},
        ),
    ]
    for answer in answers:
        assert answer.status_code == 400
        assert code not in answer.text
        assert verifier not in answer.text


async def test_no_key_code_or_verifier_reaches_any_log(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    code, pkce, key = await issue_code(browser, stack, app)
    token = await exchange(api, app, code, pkce.verifier)
    connection_id = token.json()["connection_id"]
    link = await api.post(
        "/v1/connect/sessions", json={"connection_id": connection_id}, headers=app.auth
    )
    manage_token = httpx.URL(link.json()["url"]).params["token"]
    await confirm_manage_link(browser, f"/manage/start?token={manage_token}")
    await exchange(api, app, code, pkce.verifier)  # a retry, which is logged as an event

    stack.flush_logs()
    for log_file in stack.log_files():
        text = log_file.read_text(errors="replace")
        for secret in (key, app.app_api_key, pkce.verifier, code, manage_token):
            assert secret not in text, f"a secret reached {log_file.name}"
