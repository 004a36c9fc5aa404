"""How the launcher's own sync code (readiness checks, the demo app) talks to the stack's bus."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client as NatsClient

from byorouter_common.bus import connect
from byorouter_common.settings import ServiceSettings

T = TypeVar("T")


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code, even when the caller's thread already runs a loop."""

    async def run() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


async def connect_admin(settings: ServiceSettings) -> NatsClient:
    """A short-lived admin connection that fails fast (503) instead of retrying for minutes."""
    return await connect(settings, "devstack")
