"""Connecting to NATS: the options every service uses, a bare client, and the FastStream broker."""

from __future__ import annotations

import logging
from typing import Any

import nats
import nats.errors
from faststream.nats import NatsBroker, NatsUserPassword
from nats.aio.client import Client as NatsClient

from byorouter_common import errors
from byorouter_common.nats_permissions import inbox_prefix
from byorouter_common.redact import safe_url
from byorouter_common.settings import ServiceSettings


def connect_options(settings: ServiceSettings, name: str) -> dict[str, Any]:
    """nats-py connect options every service uses: reconnect forever, name the connection.

    Every node of a cluster is listed (and nats-py learns the others from the one it reaches), so
    a client whose node dies reconnects to another.
    """
    options: dict[str, Any] = {
        "servers": settings.nats_servers,
        "name": f"byorouter-{name}",
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
        # A user may read only its own inboxes (nats_permissions), so replies go there.
        options["inbox_prefix"] = inbox_prefix(settings.nats_user)
    return options


async def _ignore_connect_error(_error: Exception) -> None:
    return None


async def connect(settings: ServiceSettings, name: str) -> NatsClient:
    """A bare nats-py connection, for processes that serve no FastStream handlers (the CLI)."""
    options = connect_options(settings, name)
    # nats-py retries the first connect forever unless a positive limit drops the server; the
    # caller reports the failure itself, so nats-py's own traceback logging is silenced.
    options["max_reconnect_attempts"] = 1
    options["allow_reconnect"] = False
    options["error_cb"] = _ignore_connect_error
    try:
        return await nats.connect(**options)
    except (OSError, nats.errors.NoServersError) as exc:
        raise errors.unavailable(f"Cannot reach NATS at {safe_url(settings.nats_url)}.") from exc


def make_broker(settings: ServiceSettings, name: str) -> NatsBroker:
    """The service's FastStream broker (one NATS connection for handlers, events and streams)."""
    options = connect_options(settings, name)
    servers = options.pop("servers")
    security = None
    if "user" in options:
        # FastStream takes a login only as a security object, not as nats-py's keywords.
        security = NatsUserPassword(options.pop("user"), options.pop("password") or "")
    return NatsBroker(
        servers,
        security=security,
        logger=logging.getLogger(f"byorouter.{name}.broker"),
        log_level=logging.DEBUG,
        **options,
    )
