"""The demo app: a keystore app and connection on the fake upstream, and the chat app that plays it.

`demo.json` keeps the app's key and connection so a restart reuses them while they still work;
the example chat app (examples/chat-app/) runs as the app's own web front end.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypedDict

import httpx
from pydantic import SecretStr

from byorouter_cli.dev.admin_bus import connect_admin, run_sync
from byorouter_cli.dev.state import write_private_json
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError
from byorouter_common.settings import ServiceSettings

DEMO_APP_NAME: Final = "BYORouter demo"
DEMO_MODEL: Final = "openai/gpt-4o-mini"
# The same fake upstream, reached as the user's own server through a tunnel client.
DEMO_TUNNEL_MODEL: Final = "selfhosted/gpt-4o-mini"
TUNNEL_CLIENT: Final = "tunnel-client"
EXAMPLE_APP: Final = "example-app"
EXAMPLE_APP_SCRIPT: Final = Path(__file__).resolve().parents[3] / "examples" / "chat-app" / "app.py"
EXAMPLE_CALLBACK_PATH: Final = "/api/byorouter/callback"


class DemoFacts(TypedDict):
    """What `.byorouter/demo.json` holds: enough to call the gateway right away."""

    api_url: str
    app_api_key: str
    client_id: str
    connection_id: str
    model: str


@dataclass(frozen=True)
class DemoTarget:
    """What the demo app must point at: this stack's bus, gateway, fake upstream and example app."""

    admin: ServiceSettings
    gateway_url: str
    upstream_base_url: str
    example_app_port: int

    @property
    def redirect_uris(self) -> list[str]:
        """The example app's callback under both loopback names a browser may use for it."""
        port = self.example_app_port
        return [
            f"http://127.0.0.1:{port}{EXAMPLE_CALLBACK_PATH}",
            f"http://localhost:{port}{EXAMPLE_CALLBACK_PATH}",
        ]


def ensure_demo(target: DemoTarget, demo_file: Path, *, can_check: bool) -> DemoFacts:
    """The demo app and connection from `demo_file` if they still work, else new ones.

    `can_check` is false when the stack runs no gateway to check the old ones against.
    """
    existing = _load_demo(demo_file, target)
    if existing is not None and can_check and _demo_still_works(existing, target):
        facts = existing
    else:
        facts = run_sync(lambda: _create_demo(target))
    write_private_json(demo_file, facts)
    return facts


def example_app_env(
    demo: DemoFacts, *, connect_url: str, base_url: str, port: int
) -> dict[str, str]:
    """What the example chat app needs to play the demo app."""
    return {
        "BYOROUTER_API_URL": demo["api_url"],
        "BYOROUTER_APP_API_KEY": demo["app_api_key"],
        "BYOROUTER_CLIENT_ID": demo["client_id"],
        "BYOROUTER_CONNECT_PUBLIC_URL": connect_url,
        "CHAT_APP_BASE_URL": base_url,
        "CHAT_APP_HOST": "127.0.0.1",
        "CHAT_APP_PORT": str(port),
    }


def _load_demo(demo_file: Path, target: DemoTarget) -> DemoFacts | None:
    try:
        raw = json.loads(demo_file.read_text())
    except (OSError, ValueError):
        return None
    keys = DemoFacts.__annotations__.keys()
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in keys):
        return None
    return DemoFacts(
        api_url=target.gateway_url,
        app_api_key=raw["app_api_key"],
        client_id=raw["client_id"],
        connection_id=raw["connection_id"],
        model=DEMO_MODEL,
    )


def _demo_still_works(facts: DemoFacts, target: DemoTarget) -> bool:
    """The app key still authenticates and its connection still points at our upstream."""
    try:
        response = httpx.get(
            f"{target.gateway_url}/v1/connections/{facts['connection_id']}",
            headers={"Authorization": f"Bearer {facts['app_api_key']}"},
            timeout=5.0,
        )
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    try:
        providers = response.json().get("providers") or []
    except (ValueError, AttributeError):
        return True
    base_urls = {p.get("base_url") for p in providers if isinstance(p, dict)}
    # A previous run may have used another upstream port (tests pick free ports).
    if base_urls and target.upstream_base_url not in base_urls:
        return False
    # ... or another example-app port, which the app's redirect URIs must name.
    return _demo_redirects_here(facts["client_id"], target)


def _demo_redirects_here(client_id: str, target: DemoTarget) -> bool:
    async def look_up() -> ks.AppInfo:
        nc = await connect_admin(target.admin)
        try:
            return await Bus(nc, timeout_s=10.0).request(ks.APP_GET, ks.AppGet(client_id=client_id))
        finally:
            await nc.close()

    try:
        app = run_sync(look_up)
    except ByoError:
        return False
    return set(target.redirect_uris) <= set(app.redirect_uris)


async def _create_demo(target: DemoTarget) -> DemoFacts:
    nc = await connect_admin(target.admin)
    try:
        bus = Bus(nc, timeout_s=10.0)
        app = await bus.request(
            ks.APP_CREATE,
            ks.AppCreate(name=DEMO_APP_NAME, redirect_uris=target.redirect_uris),
        )
        # A made-up key: the fake upstream accepts any key, a real provider none of these.
        fake_key = "sk-demo-" + secrets.token_urlsafe(24)
        connection = await bus.request(
            ks.CONNECTION_CREATE,
            ks.ConnectionCreate(
                app_id=app.app_id,
                providers=[
                    ks.ProviderCredentialInput(
                        provider="openai",
                        api_key=SecretStr(fake_key),
                        base_url=target.upstream_base_url,
                    )
                ],
            ),
        )
    finally:
        await nc.close()
    return DemoFacts(
        api_url=target.gateway_url,
        app_api_key=app.app_api_key.get_secret_value(),
        client_id=app.client_id,
        connection_id=connection.connection_id,
        model=DEMO_MODEL,
    )


async def register_demo_tunnel(admin: ServiceSettings, demo: DemoFacts) -> ks.TunnelToken:
    """A new tunnel on the demo connection (registering replaces the one a previous run made)."""
    nc = await connect_admin(admin)
    try:
        bus = Bus(nc, timeout_s=10.0)
        app = await bus.request(ks.APP_GET, ks.AppGet(client_id=demo["client_id"]))
        return await bus.request(
            ks.TUNNEL_REGISTER,
            ks.TunnelRegister(
                app_id=app.app_id, connection_id=demo["connection_id"], name="make run demo"
            ),
        )
    finally:
        await nc.close()
