"""The consent page's defences (RFC 9700): exact redirect URIs, PKCE, state, CSRF, headers."""

from __future__ import annotations

import secrets
from urllib.parse import quote

import httpx
import pytest

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError
from tests.connect.conftest import (
    Pkce,
    RegisteredApp,
    authorize_query,
    consent,
    form_with_action,
    openai_fields,
    post_form,
    query_of,
    read_page,
    register_app,
)

REGISTERED = "https://app.example/api/byorouter/callback"


@pytest.fixture
async def https_app(bus: Bus) -> RegisteredApp:
    return await register_app(bus, REGISTERED, "http://127.0.0.1:3000/cb")


@pytest.mark.parametrize(
    "uri",
    [
        "http://app.example/callback",  # plain http off loopback
        "https://app.example/cb#fragment",
        "https://app.example/cb#",
        "https://good.example@evil.example/cb",  # userinfo trick
        "https://user:pw@app.example/cb",
        "/relative/callback",
        "javascript:alert(1)",
        "https://app.example/cb with space",
    ],
)
async def test_app_registration_refuses_unsafe_redirect_uris(bus: Bus, uri: str) -> None:
    with pytest.raises(ByoError) as refused:
        await bus.request(ks.APP_CREATE, ks.AppCreate(name="bad", redirect_uris=[uri]))
    assert refused.value.status == 400
    assert refused.value.code == "invalid_redirect_uri"


async def test_app_registration_accepts_https_and_loopback_http(bus: Bus) -> None:
    uris = ["https://app.example/cb?x=1", "http://localhost:3000/cb", "http://127.0.0.1:8000/cb"]
    app = await bus.request(ks.APP_CREATE, ks.AppCreate(name="ok", redirect_uris=uris))
    assert app.redirect_uris == uris


@pytest.mark.parametrize(
    "redirect_uri",
    [
        REGISTERED + "/",  # trailing slash
        REGISTERED.upper(),  # case
        "https://APP.example/api/byorouter/callback",  # host case
        REGISTERED + "?extra=1",  # extra query
        "https://app.example:8443/api/byorouter/callback",  # other port
        "https://app.example:443/api/byorouter/callback",  # explicit default port
        "http://app.example/api/byorouter/callback",  # http on a non-loopback host
        "https://evil.example@app.example/api/byorouter/callback",  # userinfo
        REGISTERED + "#frag",  # fragment
        "https://app.example/api/byorouter/callback/../callback",
        "https://app.example/api/byorouter/%63allback",  # an escaped letter
        "https://evil.example/api/byorouter/callback",
        "",
    ],
)
async def test_a_redirect_uri_that_is_not_exactly_registered_gets_an_error_page(
    browser: httpx.AsyncClient, https_app: RegisteredApp, redirect_uri: str
) -> None:
    page = await browser.get(authorize_query(https_app, Pkce.new(), redirect_uri=redirect_uri))

    assert page.status_code == 400
    assert "location" not in page.headers
    assert "This link cannot be used" in page.text
    assert not read_page(page.text).forms


async def test_a_missing_redirect_uri_gets_an_error_page(
    browser: httpx.AsyncClient, https_app: RegisteredApp
) -> None:
    page = await browser.get(
        f"/authorize?client_id={https_app.client_id}&code_challenge={Pkce.new().challenge}"
        "&code_challenge_method=S256&state=s"
    )
    assert page.status_code == 400
    assert "location" not in page.headers


@pytest.mark.parametrize("client_id", ["cli_doesnotexist0000000000", "", "x" * 500])
async def test_an_unknown_client_id_gets_an_error_page_and_never_a_redirect(
    browser: httpx.AsyncClient, client_id: str
) -> None:
    page = await browser.get(
        "/authorize?"
        f"client_id={client_id}&redirect_uri={quote(REGISTERED)}&state=s"
        f"&code_challenge={Pkce.new().challenge}&code_challenge_method=S256"
    )
    assert page.status_code == 400
    assert "location" not in page.headers
    assert "Unknown app" in page.text


async def test_the_exact_registered_uri_is_accepted(
    browser: httpx.AsyncClient, https_app: RegisteredApp
) -> None:
    page = await browser.get(authorize_query(https_app, Pkce.new(), redirect_uri=REGISTERED))
    assert page.status_code == 200


@pytest.mark.parametrize(
    ("extra", "drop_pkce"),
    [
        ({}, True),  # no PKCE at all
        ({"code_challenge": "A" * 43}, False),  # method missing: plain by default, refused
        ({"code_challenge": "A" * 43, "code_challenge_method": "plain"}, False),
        ({"code_challenge": "short", "code_challenge_method": "S256"}, False),
        ({"response_type": "token"}, False),
    ],
)
async def test_authorization_without_pkce_s256_goes_back_with_an_error_and_the_state(
    browser: httpx.AsyncClient, app: RegisteredApp, extra: dict[str, str], drop_pkce: bool
) -> None:
    pkce = None if drop_pkce or "code_challenge" in extra else Pkce.new()
    page = await browser.get(authorize_query(app, pkce, state="s t/ä", **extra))

    assert page.status_code == 303
    returned = query_of(page.headers["location"])
    assert returned["error"][0] in ("invalid_request", "unsupported_response_type")
    assert returned["state"] == ["s t/ä"]
    assert "code" not in returned
    assert page.headers["location"].startswith(app.redirect_uris[0] + "?")


async def test_state_comes_back_byte_for_byte(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    # Spaces, plus signs, escapes, non-ASCII, and bytes that are not even UTF-8.
    raw_state = "a%20b%2Bc%2F%25%26%3D%3F%C3%A9%FF%FE~"
    pkce = Pkce.new()
    page = await browser.get(
        f"/authorize?client_id={app.client_id}&redirect_uri={quote(app.redirect_uris[0])}"
        f"&code_challenge={pkce.challenge}&code_challenge_method=S256&state={raw_state}"
    )
    answer = await post_form(
        browser,
        form_with_action(page.text, "/authorize"),
        openai_fields(stack, "sk-test-" + secrets.token_hex(8)),
    )

    location = answer.headers["location"]
    assert location.endswith("&state=" + raw_state)
    code = query_of(location)["code"][0]
    assert len(code) >= 43  # at least 256 bits, base64url


async def test_a_form_post_without_or_with_a_wrong_csrf_token_is_refused(
    browser: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    form = await consent(browser, app, Pkce.new())
    keys = openai_fields(stack, "sk-test-" + secrets.token_hex(8))

    missing = await post_form(browser, form, {**keys, "csrf_token": ""})
    wrong = await post_form(browser, form, {**keys, "csrf_token": "A" * 43})
    browser.cookies.clear()
    no_cookie = await post_form(browser, form, keys)

    for answer in (missing, wrong, no_cookie):
        assert answer.status_code == 403
        assert "location" not in answer.headers


async def test_the_form_that_carries_keys_is_answered_with_303(
    browser: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    form = await consent(browser, app, Pkce.new())
    answer = await post_form(browser, form, openai_fields(stack, "sk-test-" + secrets.token_hex(8)))
    assert answer.status_code == 303


async def test_pages_send_the_security_headers(
    browser: httpx.AsyncClient, app: RegisteredApp
) -> None:
    for path in (authorize_query(app, Pkce.new()), "/", "/manage", "/no-such-page"):
        page = await browser.get(path)
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"


async def test_key_inputs_are_password_fields_that_are_not_autocompleted(
    browser: httpx.AsyncClient, app: RegisteredApp
) -> None:
    page = await browser.get(authorize_query(app, Pkce.new()))
    form = form_with_action(page.text, "/authorize")
    keys = [c for c in form.controls if c.get("name", "").endswith("api_key")]

    assert [k["name"] for k in keys] == [
        "openai_api_key",
        "anthropic_api_key",
        "openrouter_api_key",
        "selfhosted_api_key",
    ]
    for key in keys:
        assert key["type"] == "password"
        assert key["autocomplete"] == "off"
        assert "value" not in key
    # Every field a person fills has a label pointing at it.
    for control in form.controls:
        if control["tag"] in ("input", "select") and control.get("type") != "hidden":
            assert f'for="{control["id"]}"' in page.text


async def test_a_rejected_form_never_shows_the_key_it_was_sent(
    browser: httpx.AsyncClient, app: RegisteredApp
) -> None:
    form = await consent(browser, app, Pkce.new())
    key = "sk-proj-" + secrets.token_hex(20)

    bad_url = await post_form(
        browser, form, {"openai_api_key": key, "openai_base_url": "ftp://" + key}
    )
    tested = await post_form(
        browser,
        form,
        {"anthropic_api_key": key, "anthropic_base_url": "not a url", "test": "anthropic"},
        action="/authorize/test",
    )
    garbage = await browser.post(
        "/authorize", content=b'{"openai_api_key": "' + key.encode() + b'"}'
    )

    assert bad_url.status_code == 400
    assert "base URL must be an http(s) URL" in bad_url.text
    assert tested.status_code == 200
    for answer in (bad_url, tested, garbage):
        assert key not in answer.text
    assert garbage.status_code == 415


async def test_an_empty_form_asks_for_a_key_and_issues_no_code(
    browser: httpx.AsyncClient, app: RegisteredApp
) -> None:
    form = await consent(browser, app, Pkce.new())
    answer = await post_form(browser, form, {})
    assert answer.status_code == 400
    assert "Enter at least one key" in answer.text
    assert "location" not in answer.headers


async def test_a_first_try_with_only_seed_000s_parameters_is_told_everything_it_must_add(
    browser: httpx.AsyncClient, app: RegisteredApp
) -> None:
    # client_id, redirect_uri and state only: what an app that read no further sends.
    page = await browser.get(
        f"/authorize?client_id={app.client_id}&redirect_uri={quote(app.redirect_uris[0])}&state=s"
    )
    assert page.status_code == 303
    returned = query_of(page.headers["location"])
    assert returned["error"] == ["invalid_request"]
    assert returned["state"] == ["s"]
    description = returned["error_description"][0]
    assert "Missing code_challenge, code_challenge_method" in description
    assert "response_type=code" in description
    assert "S256" in description
    assert "docs/connect.md#1-send-the-browser-to-connect" in description


async def test_a_missing_method_alone_is_named_alone(
    browser: httpx.AsyncClient, app: RegisteredApp
) -> None:
    page = await browser.get(authorize_query(app, None, state="s", code_challenge="A" * 43))
    description = query_of(page.headers["location"])["error_description"][0]
    assert description.startswith("Missing code_challenge_method.")
