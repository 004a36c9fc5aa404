"""The gateway's wiring: its FastAPI app (routes, error handlers, middleware) and `SERVICE`."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from byorouter_common.bus import Bus, subscribe_event
from byorouter_common.contracts import events
from byorouter_common.contracts import gateway as gw
from byorouter_common.health import health_router
from byorouter_common.rate_limit import TokenBuckets
from byorouter_common.service import Service, ServiceRuntime
from byorouter_common.shared_limits import SharedTokenBuckets
from byorouter_gateway.api import openapi
from byorouter_gateway.api.routes import (
    chat,
    connect_sessions,
    connections,
    credentials,
    embeddings,
    models,
    oauth,
    pushed_authorizations,
    responses,
    tunnels,
    user_preferences,
)
from byorouter_gateway.auth import AppKeyAuth
from byorouter_gateway.deps import CREDENTIAL_TESTS_MESSAGE, Gateway
from byorouter_gateway.errors import install_error_handlers
from byorouter_gateway.hot_path import HotRoute, hot_route
from byorouter_gateway.limits import RequestLimits
from byorouter_gateway.middleware import RequestContextMiddleware
from byorouter_gateway.settings import GatewaySettings

DESCRIPTION = (
    "OpenAI-compatible API of BYORouter. Authenticate with `Authorization: Bearer <app key>`; "
    "per-user calls add `X-Byorouter-Connection: conn_...`. Errors use OpenAI's error shape."
)
# The services a chat request needs; /readyz asks each through the NATS micro protocol.
DEPENDENCIES = ("keystore", "router")


def create_app(settings: GatewaySettings, bus_provider: Callable[[], Bus]) -> FastAPI:
    """The gateway app; `bus_provider` gives the bus once the service has connected.

    `app.state.gateway.app_keys.on_key_revoked` must be subscribed to `APP_KEY_REVOKED` (and
    `on_app_limits_changed` to `APP_LIMITS_CHANGED`) by the caller before the broker starts, so
    revoked keys are refused and new limits applied at once.
    """
    app = FastAPI(
        title="BYORouter gateway",
        version="0.1.0",
        description=DESCRIPTION,
        redoc_url=None,
        # Our middleware makes the one server span; FastAPI's own would add spans per
        # dependency and record request data we never want in a trace.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.gateway = Gateway(
        settings=settings,
        bus=bus_provider,
        app_keys=AppKeyAuth(
            bus_provider,
            ttl_s=settings.auth_cache_ttl_s,
            max_entries=settings.auth_cache_size,
            failures_per_ip_per_min=settings.auth_failures_per_ip_per_min,
        ),
        limits=RequestLimits(
            settings,
            SharedTokenBuckets(
                lambda: bus_provider().nc, gw.RATE_LIMITS, replicas=settings.jetstream_replicas
            ),
        ),
        credential_tests=TokenBuckets.per_minute(
            settings.credential_tests_per_app_per_min, CREDENTIAL_TESTS_MESSAGE
        ),
    )
    install_error_handlers(app)

    # Routes spell their full paths: the route template is what spans and access lines show.
    for resource in (
        chat,
        embeddings,
        responses,
        models,
        connections,
        connect_sessions,
        pushed_authorizations,
        tunnels,
        credentials,
        user_preferences,
    ):
        app.include_router(resource.router)
    app.include_router(
        health_router(bus_provider, dependencies=DEPENDENCIES, timeout_s=settings.ready_timeout_s)
    )
    oauth.install(app)
    openapi.install(app)

    # Innermost of ours: the chat route is served without FastAPI's routing (`hot_path`).
    app.add_middleware(HotRoute, route=hot_route(chat.router.routes, "/v1/chat/completions"))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-Byorouter-Connection",
                "X-Request-Id",
            ],
            expose_headers=[
                "X-Request-Id",
                "X-Byorouter-Provider",
                "X-Byorouter-Attempts",
                "Retry-After",
            ],
        )
    # Added last, so it is outermost: every response, CORS preflights too, gets a request id.
    app.add_middleware(RequestContextMiddleware, access_log_enabled=settings.access_log)
    return app


async def register(runtime: ServiceRuntime[GatewaySettings]) -> None:
    settings = runtime.settings
    app = create_app(settings, lambda: runtime.bus)
    gateway: Gateway = app.state.gateway
    # Subscribed before the broker starts, so no revocation can slip in between.
    subscribe_event(runtime.broker, events.APP_KEY_REVOKED, gateway.app_keys.on_key_revoked)
    subscribe_event(
        runtime.broker, events.APP_LIMITS_CHANGED, gateway.app_keys.on_app_limits_changed
    )
    # Opens (or creates) the shared limits bucket; if the bus refuses, limits count per copy.
    runtime.on_started(gateway.limits.buckets.start)
    runtime.serve_http(
        app, host=settings.host, port=settings.port, grace_s=settings.shutdown_grace_s
    )


SERVICE = Service("gateway", "OpenAI-compatible HTTP front door of BYORouter.", register)
