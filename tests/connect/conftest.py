"""Driving the Connect pages like a browser without one: httpx, its cookie jar, an HTML form reader.

Every test runs against the session's whole `stack` (tests/conftest.py): the pages talk to the
real keystore and router over NATS, the app's server side talks to the real gateway. Apps are
made fresh per test through keystore, the same path `byorouter app create` uses. Upstreams we
cannot reach are fakes: the stack's fake OpenAI, plus `fake_providers` here, an in-process server
that speaks OpenRouter's model list and an OpenAI that rejects every key.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from aiohttp import web

from byorouter_cli.dev.ports import free_ports
from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from byorouter_common.contracts import keystore as ks
from byorouter_common.settings import ServiceSettings

REDIRECT_URI = "http://localhost:3000/api/byorouter/callback"
OPENROUTER_MODELS = ("anthropic/claude-3.5-sonnet", "openai/gpt-4o", "meta-llama/llama-3-70b")


# --- the app's side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredApp:
    client_id: str
    app_id: str
    app_api_key: str
    redirect_uris: list[str]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.app_api_key}"}


@dataclass(frozen=True)
class Pkce:
    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode()).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode())


@pytest.fixture(scope="session")
async def bus(stack: Stack) -> AsyncIterator[Bus]:
    nc = await connect(ServiceSettings(NATS_URL=stack.nats_url), "connect-tests")
    yield Bus(nc)
    await nc.close()


async def register_app(
    bus: Bus, *redirect_uris: str, name: str = "Portfolio Tracker"
) -> RegisteredApp:
    uris = list(redirect_uris or (REDIRECT_URI,))
    app = await bus.request(ks.APP_CREATE, ks.AppCreate(name=name, redirect_uris=uris))
    return RegisteredApp(app.client_id, app.app_id, app.app_api_key.get_secret_value(), uris)


@pytest.fixture
async def app(bus: Bus) -> RegisteredApp:
    return await register_app(bus)


def authorize_query(
    app: RegisteredApp,
    pkce: Pkce | None,
    *,
    state: str | None = "st-123",
    redirect_uri: str | None = None,
    **extra: str,
) -> str:
    params: dict[str, str] = {
        "client_id": app.client_id,
        "redirect_uri": app.redirect_uris[0] if redirect_uri is None else redirect_uri,
        "response_type": "code",
    }
    if state is not None:
        params["state"] = state
    if pkce is not None:
        params["code_challenge"] = pkce.challenge
        params["code_challenge_method"] = "S256"
    params.update(extra)
    return "/authorize?" + urlencode(params)


# --- reading pages ----------------------------------------------------------------------------


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    # Every input/select/button with its attributes, in page order.
    controls: list[dict[str, str]] = field(default_factory=list)

    def buttons(self) -> list[dict[str, str]]:
        return [c for c in self.controls if c["tag"] == "button"]

    def button(self, text: str) -> dict[str, str]:
        for button in self.buttons():
            if button["text"] == text:
                return button
        raise AssertionError(f"no button {text!r} in {[b['text'] for b in self.buttons()]}")


class PageReader(HTMLParser):
    """The forms of a page, their fields' current values and their buttons' texts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.datalists: dict[str, list[str]] = {}
        self._form: Form | None = None
        self._select: dict[str, str] | None = None
        self._button: dict[str, str] | None = None
        self._datalist: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = Form(a.get("action", ""), a.get("method", "get").lower())
            self.forms.append(self._form)
        elif tag == "datalist":
            self._datalist = a.get("id", "")
            self.datalists[self._datalist] = []
        elif tag == "option" and self._datalist is not None:
            self.datalists[self._datalist].append(a.get("value", ""))
        elif self._form is None:
            return
        elif tag == "input":
            self._form.controls.append({"tag": "input", **a})
            kind = a.get("type", "text")
            if "name" in a and (kind not in ("checkbox", "radio") or "checked" in a):
                self._form.fields[a["name"]] = a.get("value", "")
        elif tag == "select":
            self._select = {"tag": "select", **a}
            self._form.controls.append(self._select)
        elif tag == "option" and self._select is not None:
            name = self._select.get("name")
            if name and ("selected" in a or name not in self._form.fields):
                self._form.fields[name] = a.get("value", "")
        elif tag == "button":
            self._button = {"tag": "button", "text": "", **a}
            self._form.controls.append(self._button)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag == "button" and self._button is not None:
            self._button["text"] = self._button["text"].strip()
            self._button = None
        elif tag == "datalist":
            self._datalist = None

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button["text"] += data


def read_page(html: str) -> PageReader:
    reader = PageReader()
    reader.feed(html)
    return reader


def form_with_action(html: str, action: str) -> Form:
    for form in read_page(html).forms:
        if form.action == action:
            return form
    raise AssertionError(f"no form posting to {action}")


def query_of(location: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(location).query, keep_blank_values=True)


# --- a browser without a browser ----------------------------------------------------------------


@pytest.fixture
async def browser(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A cookie-keeping client on Connect that, like a test should, never follows redirects."""
    async with httpx.AsyncClient(
        base_url=stack.connect_url, follow_redirects=False, timeout=30.0
    ) as client:
        yield client


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The app's server talking to the gateway."""
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30.0) as client:
        yield client


async def post_form(
    browser: httpx.AsyncClient,
    form: Form,
    values: dict[str, str],
    *,
    action: str | None = None,
    **headers: str,
) -> httpx.Response:
    """Submit `form` with `values` over its fields, to `action` (a button's formaction)."""
    return await browser.post(
        action or form.action,
        data={**form.fields, **values},
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )


async def confirm_manage_link(browser: httpx.AsyncClient, link: str) -> httpx.Response:
    """Open a manage link (a URL or a path), which only asks, then confirm: the 303 to /manage."""
    asking = await browser.get(httpx.URL(link).raw_path.decode())
    assert asking.status_code == 200, asking.text
    return await post_form(browser, form_with_action(asking.text, "/manage/start"), {})


async def consent(browser: httpx.AsyncClient, app: RegisteredApp, pkce: Pkce, **query: Any) -> Form:
    page = await browser.get(authorize_query(app, pkce, **query))
    assert page.status_code == 200, page.text
    return form_with_action(page.text, "/authorize")


async def connect_keys(
    browser: httpx.AsyncClient,
    app: RegisteredApp,
    pkce: Pkce,
    values: dict[str, str],
    **query: Any,
) -> str:
    """Open the consent page, submit `values`, and return the code the app is redirected with."""
    form = await consent(browser, app, pkce, **query)
    answer = await post_form(browser, form, values)
    assert answer.status_code == 303, answer.text
    return query_of(answer.headers["location"])["code"][0]


async def exchange(
    api: httpx.AsyncClient, app: RegisteredApp, code: str, verifier: str, **extra: str
) -> httpx.Response:
    body = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": app.redirect_uris[0],
        "code_verifier": verifier,
        **extra,
    }
    return await api.post("/v1/oauth/token", json=body, headers=app.auth)


def openai_fields(stack: Stack, key: str) -> dict[str, str]:
    """The consent form's OpenAI section pointed at the stack's fake OpenAI."""
    return {"openai_api_key": key, "openai_base_url": stack.upstream_base_url}


async def connected(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> tuple[str, str]:
    """A person connected an OpenAI key (the fake); the app exchanged the code: (conn id, key)."""
    pkce = Pkce.new()
    key = "sk-test-" + secrets.token_hex(16)
    code = await connect_keys(browser, app, pkce, openai_fields(stack, key))
    token = await exchange(api, app, code, pkce.verifier)
    assert token.status_code == 200, token.text
    connection_id: str = token.json()["connection_id"]
    return connection_id, key


# --- upstreams the stack has no fake for ------------------------------------------------------


@dataclass(frozen=True)
class FakeProviders:
    url: str

    @property
    def rejecting_openai(self) -> str:
        """An OpenAI-compatible base URL that answers every key with 401."""
        return self.url + "/rejecting/v1"


async def _rejecting_models(_: web.Request) -> web.Response:
    body = {
        "error": {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    return web.json_response(body, status=401)


async def _openrouter_models(request: web.Request) -> web.Response:
    if not request.headers.get("Authorization", "").startswith("Bearer sk-or-"):
        return web.json_response({"error": {"message": "No auth", "code": 401}}, status=401)
    return web.json_response({"data": [{"id": model} for model in OPENROUTER_MODELS]})


@pytest.fixture(scope="session")
async def fake_providers() -> AsyncIterator[FakeProviders]:
    app = web.Application()
    app.router.add_get("/rejecting/v1/models", _rejecting_models)
    app.router.add_get("/api/v1/models", _openrouter_models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_ports(1)[0]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield FakeProviders(f"http://127.0.0.1:{port}")
    await runner.cleanup()


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}/v1"
