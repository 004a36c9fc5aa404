"""Runs a fake upstream as a process of its own: `python -m byorouter_fakes.<name> --port N`."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import Protocol

import uvloop


class FakeServer(Protocol):
    async def start(self, host: str, port: int) -> None: ...

    async def stop(self) -> None: ...


async def _serve(fake: FakeServer, host: str, port: int, announce: Callable[[], str]) -> None:
    await fake.start(host, port)
    print(announce(), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def run_fake(
    make: Callable[[int], FakeServer],
    announce: Callable[[FakeServer], str],
    *,
    prog: str,
    description: str,
    default_port: int,
    default_chunks: int,
    argv: list[str] | None = None,
) -> None:
    """Parse `--host/--port/--chunks`, serve `make(chunks)` until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument(
        "--chunks",
        type=int,
        default=default_chunks,
        help="content pieces per streamed answer (default %(default)s)",
    )
    args = parser.parse_args(argv)
    fake = make(args.chunks)
    uvloop.run(_serve(fake, args.host, args.port, lambda: announce(fake)))
