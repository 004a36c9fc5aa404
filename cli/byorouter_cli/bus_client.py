"""How the CLI reaches a running stack: find the NATS URL, call one service endpoint, hang up."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from byorouter_common.bus import Bus, connect
from byorouter_common.settings import ServiceSettings

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
# Written by `byorouter dev` so the CLI in the same directory finds the NATS it started.
DEV_FILE = Path(".byorouter") / "dev.json"

T = TypeVar("T")


def resolve_nats_url(cwd: Path | None = None) -> str:
    """`NATS_URL`, else the one `byorouter dev` recorded in `.byorouter/dev.json`, else 4222."""
    from_env = os.environ.get("NATS_URL")
    if from_env:
        return from_env
    dev_file = (cwd or Path.cwd()) / DEV_FILE
    try:
        recorded = json.loads(dev_file.read_text()).get("nats_url")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded if isinstance(recorded, str) and recorded else DEFAULT_NATS_URL


async def with_bus(work: Callable[[Bus], Awaitable[T]], *, timeout_s: float = 10.0) -> T:
    """Connect once, run `work` against the bus, and always close the connection."""
    settings = ServiceSettings().model_copy(update={"nats_url": resolve_nats_url()})
    nc = await connect(settings, "cli")
    try:
        return await work(Bus(nc, timeout_s=timeout_s))
    finally:
        await nc.close()
