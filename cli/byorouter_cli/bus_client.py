"""How the CLI reaches a running stack: find NATS and a login, call one endpoint, hang up."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import nats.errors

from byorouter_cli.dev.state import DEFAULT_STATE_DIR, DEV_FILE_NAME
from byorouter_common.bus import Bus, connect
from byorouter_common.errors import ByoError
from byorouter_common.settings import ServiceSettings

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
# Written by `byorouter dev` so the CLI in the same directory finds the NATS it started.
DEV_FILE = DEFAULT_STATE_DIR / DEV_FILE_NAME

T = TypeVar("T")


def _recorded(cwd: Path | None) -> dict[str, Any]:
    try:
        recorded = json.loads(((cwd or Path.cwd()) / DEV_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def resolve_nats_url(cwd: Path | None = None) -> str:
    """`NATS_URL`, else the one `byorouter dev` recorded in `.byorouter/dev.json`, else 4222."""
    from_env = os.environ.get("NATS_URL")
    if from_env:
        return from_env
    return _text(_recorded(cwd).get("nats_url")) or DEFAULT_NATS_URL


def resolve_bus_settings(cwd: Path | None = None) -> ServiceSettings:
    """Where and as whom the CLI connects.

    `BYOROUTER_NATS_USER` / `BYOROUTER_NATS_PASSWORD` from the environment win. Otherwise, when
    the URL is the one `byorouter dev` recorded, so is its login (the stack's `admin` user):
    those credentials belong to that server only and never go to a `NATS_URL` set elsewhere.
    """
    settings = ServiceSettings()
    url = resolve_nats_url(cwd)
    update: dict[str, Any] = {"nats_url": url}
    recorded = _recorded(cwd)
    if not settings.nats_user and url == _text(recorded.get("nats_url")):
        update["nats_user"] = _text(recorded.get("nats_user"))
        update["nats_password"] = _text(recorded.get("nats_password"))
    return settings.model_copy(update=update)


async def with_bus(work: Callable[[Bus], Awaitable[T]], *, timeout_s: float = 10.0) -> T:
    """Connect once, run `work` against the bus, and always close the connection."""
    settings = resolve_bus_settings()
    try:
        nc = await connect(settings, "cli")
    except nats.errors.Error as exc:
        # The server answered but refused us: anonymous on a bus with users, or a bad password.
        who = f"as {settings.nats_user!r}" if settings.nats_user else "without a NATS user"
        raise ByoError(
            401,
            "nats_login_refused",
            f"NATS at {settings.nats_url} refused the connection {who}; set "
            "BYOROUTER_NATS_USER and BYOROUTER_NATS_PASSWORD (admin's login is in "
            ".byorouter/nats-users.json after `byorouter dev`).",
        ) from exc
    try:
        return await work(Bus(nc, timeout_s=timeout_s))
    finally:
        await nc.close()
