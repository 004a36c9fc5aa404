"""`python -m byorouter_gateway`: join the bus, then serve the HTTP API until stopped."""

from __future__ import annotations

from byorouter_common.bus import subscribe_event
from byorouter_common.contracts import events
from byorouter_common.service import ServiceRuntime, run_service, serve_http
from byorouter_gateway.deps import Gateway
from byorouter_gateway.main import create_app
from byorouter_gateway.settings import GatewaySettings

DESCRIPTION = "OpenAI-compatible HTTP front door of BYORouter."


async def main(runtime: ServiceRuntime) -> None:
    """Serve until `runtime.stopped` is set (a signal, or a test), then finish open responses."""
    settings = runtime.settings
    assert isinstance(settings, GatewaySettings)
    app = create_app(settings, lambda: runtime.bus)
    gateway: Gateway = app.state.gateway
    # Subscribed before the broker starts, so no revocation can slip in between.
    subscribe_event(runtime.broker, events.APP_KEY_REVOKED, gateway.app_keys.on_key_revoked)
    await runtime.start()
    await serve_http(
        runtime, app, host=settings.host, port=settings.port, grace_s=settings.shutdown_grace_s
    )


if __name__ == "__main__":
    run_service("gateway", GatewaySettings(), main, description=DESCRIPTION)
