"""A small chat app that lets its users bring their own AI keys through BYORouter Connect.

It plays the chatbot of the integration plan (seed 000): a "Connect API Keys" button that sends
the browser to Connect with `state` and PKCE, a callback that exchanges the code for a connection
id, a connection status, a chat box that streams through the gateway, and "Manage API Keys" /
"Disconnect". It is documentation that runs: read it top to bottom next to docs/connect.md.

The app API key stays on this server: the browser talks only to this app, which adds the key and
the `X-Byorouter-Connection` header when it calls the gateway. The "user" here is one browser
session, kept in a signed HttpOnly cookie (a real app stores the connection id with its user).

Run it from the repository root (after `byorouter dev`, which also starts it for you):

    BYOROUTER_APP_API_KEY=... BYOROUTER_CLIENT_ID=... python examples/chat-app/app.py
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import httpx
import uvicorn
from fastapi import FastAPI, Form, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE: Final = Path(__file__).resolve().parent
CALLBACK_PATH: Final = "/api/byorouter/callback"
SESSION_COOKIE: Final = "chat_session"
# A week; the state and verifier of an unfinished connect are only needed for a few minutes.
SESSION_MAX_AGE_S: Final = 7 * 24 * 3600


@dataclass(frozen=True)
class Config:
    """Where BYORouter is and who this app is there; all from the environment."""

    api_url: str  # the gateway, e.g. http://localhost:4000
    app_api_key: str  # secret: never sent to the browser, never logged
    client_id: str
    connect_url: str  # the Connect page, e.g. http://localhost:8080
    base_url: str  # where browsers reach this app; redirect_uri = base_url + CALLBACK_PATH
    host: str
    port: int
    session_secret: bytes

    @property
    def redirect_uri(self) -> str:
        return self.base_url + CALLBACK_PATH

    @classmethod
    def from_env(cls) -> Config:
        env = os.environ
        port = int(env.get("CHAT_APP_PORT", "3000"))
        missing = [n for n in ("BYOROUTER_APP_API_KEY", "BYOROUTER_CLIENT_ID") if not env.get(n)]
        if missing:
            raise SystemExit(
                f"set {' and '.join(missing)} (`byorouter app create` prints both; "
                "`byorouter dev` writes them to .byorouter/demo.json)"
            )
        secret = env.get("CHAT_APP_SESSION_SECRET")
        return cls(
            api_url=env.get("BYOROUTER_API_URL", "http://127.0.0.1:4000").rstrip("/"),
            app_api_key=env["BYOROUTER_APP_API_KEY"],
            client_id=env["BYOROUTER_CLIENT_ID"],
            # BYOROUTER_CONNECT_URL: the old name, still read.
            connect_url=env.get(
                "BYOROUTER_CONNECT_PUBLIC_URL",
                env.get("BYOROUTER_CONNECT_URL", "http://127.0.0.1:8080"),
            ).rstrip("/"),
            base_url=env.get("CHAT_APP_BASE_URL", f"http://127.0.0.1:{port}").rstrip("/"),
            host=env.get("CHAT_APP_HOST", "127.0.0.1"),
            port=port,
            # A fresh secret per start signs everyone out on restart, which is fine for a demo.
            session_secret=secret.encode() if secret else secrets.token_bytes(32),
        )


# --- the session: a signed cookie -----------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal(session: dict[str, Any], secret: bytes) -> str:
    payload = _b64(json.dumps({**session, "iat": int(time.time())}).encode())
    signature = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def unseal(cookie: str | None, secret: bytes) -> dict[str, Any]:
    """The session in a cookie we signed, or an empty one (unsigned, tampered or expired)."""
    if not cookie or "." not in cookie:
        return {}
    payload, signature = cookie.rsplit(".", 1)
    expected = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature, expected):
        return {}
    try:
        session = json.loads(_unb64(payload))
    except ValueError:
        return {}
    if not isinstance(session, dict) or time.time() - session.get("iat", 0) > SESSION_MAX_AGE_S:
        return {}
    session.pop("iat", None)
    return session


def load_session(request: Request, config: Config) -> dict[str, Any]:
    session = unseal(request.cookies.get(SESSION_COOKIE), config.session_secret)
    # A per-session token for this app's own forms and fetches (CSRF).
    session.setdefault("csrf", secrets.token_urlsafe(24))
    return session


def save_session(response: Response, session: dict[str, Any], config: Config) -> Response:
    response.set_cookie(
        SESSION_COOKIE,
        seal(session, config.session_secret),
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        # Lax: the browser still sends it when Connect redirects back to the callback.
        samesite="lax",
        secure=config.base_url.startswith("https://"),
    )
    return response


# --- talking to the gateway -----------------------------------------------------------------


class Gateway:
    """The BYORouter calls this app makes, each with the app key (and the connection id)."""

    def __init__(self, config: Config, http: httpx.AsyncClient) -> None:
        self.config = config
        self.http = http

    def headers(self, connection_id: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.config.app_api_key}"}
        if connection_id is not None:
            headers["X-Byorouter-Connection"] = connection_id
        return headers

    async def exchange_code(self, code: str, code_verifier: str) -> httpx.Response:
        return await self.http.post(
            f"{self.config.api_url}/v1/oauth/token",
            headers=self.headers(),
            json={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.config.redirect_uri,
                "code_verifier": code_verifier,
            },
        )

    async def connection(self, connection_id: str) -> httpx.Response:
        return await self.http.get(
            f"{self.config.api_url}/v1/connections/{connection_id}", headers=self.headers()
        )

    async def models(self, connection_id: str) -> httpx.Response:
        return await self.http.get(
            f"{self.config.api_url}/v1/models", headers=self.headers(connection_id)
        )

    async def manage_link(self, connection_id: str) -> httpx.Response:
        return await self.http.post(
            f"{self.config.api_url}/v1/connect/sessions",
            headers=self.headers(),
            json={"connection_id": connection_id, "return_url": self.config.base_url + "/"},
        )

    async def disconnect(self, connection_id: str) -> httpx.Response:
        return await self.http.delete(
            f"{self.config.api_url}/v1/connections/{connection_id}", headers=self.headers()
        )


def error_message(response: httpx.Response) -> str:
    """The gateway's error (OpenAI's shape) as one line for a person, with its status."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.reason_phrase
    return f"BYORouter answered {response.status_code}: {message}"


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier (64 url-safe characters) and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    challenge = _b64(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


# --- the app --------------------------------------------------------------------------------


def create_app(config: Config) -> FastAPI:
    templates = Jinja2Templates(directory=HERE / "templates")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Chats stream for a while; only connecting must be quick.
        timeout = httpx.Timeout(10.0, read=120.0)
        async with httpx.AsyncClient(timeout=timeout) as http:
            app.state.gateway = Gateway(config, http)
            yield

    app = FastAPI(title="Chat app (BYORouter example)", lifespan=lifespan, docs_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def gateway(request: Request) -> Gateway:
        result: Gateway = request.app.state.gateway
        return result

    def csrf_ok(session: dict[str, Any], token: str | None) -> bool:
        return token is not None and hmac.compare_digest(session["csrf"], token)

    @app.middleware("http")
    async def canonical_host(request: Request, call_next: Any) -> Response:
        # The session cookie belongs to one host name: localhost and 127.0.0.1 are different
        # sites to a browser, so send everyone to the one in the registered redirect URI.
        base = urlsplit(config.base_url)
        if request.url.netloc != base.netloc and request.method == "GET":
            target = f"{config.base_url}{request.url.path}"
            if request.url.query:
                target += "?" + request.url.query
            return RedirectResponse(target, status_code=307)
        response: Response = await call_next(request)
        return response

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> Response:
        session = load_session(request, config)
        notice = session.pop("notice", None)
        connection_id = session.get("connection_id")
        providers: list[dict[str, Any]] = []
        if connection_id:
            answer = await gateway(request).connection(connection_id)
            if answer.status_code == 200:
                providers = answer.json().get("providers", [])
            elif answer.status_code == 404:
                # Disconnected in Connect (or by another tab): the gateway refuses it now.
                notice = f"{error_message(answer)}. Your keys are disconnected; connect again."
                # Connect's "Return to the app" link says so itself (the gateway confirmed it).
                if request.query_params.get("byorouter") == "disconnected":
                    notice = "You disconnected on the Connect page: your keys were erased."
                session.pop("connection_id", None)
                connection_id = None
            else:
                notice = error_message(answer)
        page = templates.TemplateResponse(
            request,
            "index.html",
            {
                "connected": connection_id is not None,
                "connection_id": connection_id,
                "providers": providers,
                "notice": notice,
                "csrf": session["csrf"],
            },
        )
        return save_session(page, session, config)

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    # --- 1. send the browser to Connect ---------------------------------------------------

    @app.get("/api/byorouter/connect")
    async def connect(request: Request) -> Response:
        session = load_session(request, config)
        state = secrets.token_urlsafe(32)
        verifier, challenge = pkce_pair()
        session["oauth"] = {"state": state, "verifier": verifier}
        query = urlencode(
            {
                "client_id": config.client_id,
                "redirect_uri": config.redirect_uri,
                "response_type": "code",
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        redirect = RedirectResponse(f"{config.connect_url}/authorize?{query}", status_code=303)
        return save_session(redirect, session, config)

    # --- 2. the callback: check state, exchange the code (server to server) ---------------

    @app.get(CALLBACK_PATH)
    async def callback(request: Request) -> Response:
        session = load_session(request, config)
        pending = session.pop("oauth", None)
        params = request.query_params
        if not isinstance(pending, dict) or not hmac.compare_digest(
            params.get("state", ""), pending.get("state", "")
        ):
            session["notice"] = "That sign-in link is stale or not yours; connect again."
        elif "error" in params:
            # The user clicked Cancel (access_denied) or the request was refused.
            session["notice"] = params.get("error_description") or params["error"]
        else:
            answer = await gateway(request).exchange_code(
                params.get("code", ""), pending["verifier"]
            )
            if answer.status_code == 200:
                session["connection_id"] = answer.json()["connection_id"]
                session["notice"] = "Your API keys are connected."
            else:
                session["notice"] = error_message(answer)
        return save_session(RedirectResponse("/", status_code=303), session, config)

    @app.get("/api/byorouter/status")
    async def status(request: Request) -> dict[str, Any]:
        session = load_session(request, config)
        connection_id = session.get("connection_id")
        return {"connected": connection_id is not None, "connectionId": connection_id}

    @app.get("/api/byorouter/models")
    async def models(request: Request) -> Response:
        connection_id = load_session(request, config).get("connection_id")
        if not connection_id:
            return JSONResponse({"error": "Connect your API keys first."}, status_code=403)
        answer = await gateway(request).models(connection_id)
        if answer.status_code != 200:
            return JSONResponse({"error": error_message(answer)}, status_code=answer.status_code)
        return JSONResponse({"models": [m["id"] for m in answer.json().get("data", [])]})

    # --- 3. chat, streamed through the gateway --------------------------------------------

    @app.post("/api/chat")
    async def chat(request: Request) -> Response:
        session = load_session(request, config)
        if not csrf_ok(session, request.headers.get("x-csrf-token")):
            return JSONResponse({"error": "Reload the page and try again."}, status_code=403)
        connection_id = session.get("connection_id")
        if not connection_id:
            return JSONResponse({"error": "Connect your API keys first."}, status_code=403)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "Send {model, messages} as JSON."}, status_code=400)
        upstream = gateway(request).http.build_request(
            "POST",
            f"{config.api_url}/v1/chat/completions",
            headers=gateway(request).headers(connection_id),
            json={"model": body.get("model"), "messages": body.get("messages"), "stream": True},
        )
        try:
            reply = await gateway(request).http.send(upstream, stream=True)
        except httpx.HTTPError:
            return JSONResponse({"error": "BYORouter is not reachable."}, status_code=502)
        if reply.status_code != 200:
            await reply.aread()
            await reply.aclose()
            return JSONResponse({"error": error_message(reply)}, status_code=reply.status_code)

        async def relay() -> AsyncIterator[bytes]:
            # OpenAI's stream in, plain token events out: the browser needs only the text.
            try:
                async for line in reply.aiter_lines():
                    if not line.startswith("data: "):
                        continue  # blank separators and keep-alive comments
                    data = line.removeprefix("data: ")
                    if data == "[DONE]":
                        yield sse("done", {})
                        return
                    event = json.loads(data)
                    if "error" in event:
                        yield sse("error", {"message": event["error"].get("message", "failed")})
                        return
                    for choice in event.get("choices", []):
                        token = (choice.get("delta") or {}).get("content")
                        if token:
                            yield sse("token", {"text": token})
                yield sse("error", {"message": "The answer was cut off."})
            finally:
                await reply.aclose()

        return StreamingResponse(
            relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    # --- 4. manage and disconnect ---------------------------------------------------------

    @app.post("/api/byorouter/manage")
    async def manage(request: Request, csrf: str = Form("")) -> Response:
        session = load_session(request, config)
        connection_id = session.get("connection_id")
        if not csrf_ok(session, csrf) or not connection_id:
            return save_session(RedirectResponse("/", status_code=303), session, config)
        answer = await gateway(request).manage_link(connection_id)
        if answer.status_code != 200:
            session["notice"] = error_message(answer)
            return save_session(RedirectResponse("/", status_code=303), session, config)
        # A one-time link that works for a few minutes: go there now.
        return RedirectResponse(answer.json()["url"], status_code=303)

    @app.post("/api/byorouter/disconnect")
    async def disconnect(request: Request, csrf: str = Form("")) -> Response:
        session = load_session(request, config)
        connection_id = session.get("connection_id")
        if csrf_ok(session, csrf) and connection_id:
            answer = await gateway(request).disconnect(connection_id)
            # 404: already disconnected (in Connect); either way it is gone now.
            if answer.status_code in (200, 404):
                session.pop("connection_id")
                session["notice"] = "Disconnected. Your keys were erased from BYORouter."
            else:
                session["notice"] = error_message(answer)
        return save_session(RedirectResponse("/", status_code=303), session, config)

    return app


def main() -> None:
    config = Config.from_env()
    print(f"chat app on {config.base_url} (BYORouter API {config.api_url})", flush=True)
    # No access log: the callback's URL carries the one-time code, which belongs in no log.
    uvicorn.run(
        create_app(config), host=config.host, port=config.port, access_log=False, log_level="info"
    )


if __name__ == "__main__":
    main()
