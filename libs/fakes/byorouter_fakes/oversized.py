"""Answers far larger than any real one, for testing that a reader stops in time: `mib` MiB of
spaces, or a gzip bomb (about 1 MB on the wire that decodes to 1 GiB of zeros)."""

from __future__ import annotations

import asyncio
import zlib
from typing import Final

from aiohttp import web

from byorouter_fakes.base import JSON, SSE_HEADERS

_MIB: Final = 1024 * 1024
# What `gzip_bomb` decodes to, in MiB of zero bytes.
_BOMB_MIB: Final = 1024
_bomb: bytes | None = None


def gzip_bomb() -> bytes:
    """About 1 MB of gzip that decodes to `_BOMB_MIB` MiB; built once (it takes a few seconds)."""
    global _bomb
    if _bomb is None:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = bytes(_MIB)
        _bomb = b"".join(compressor.compress(zeros) for _ in range(_BOMB_MIB)) + compressor.flush()
    return _bomb


async def oversized_answer(
    request: web.Request, streamed: bool, kind: str, mib: int
) -> web.StreamResponse:
    """A 200 answer of `mib` MiB of spaces, or (`kind` "gzip-bomb") the gzip bomb."""
    response = web.StreamResponse(headers=SSE_HEADERS if streamed else {})
    if not streamed:
        response.content_type = JSON
    if kind == "gzip-bomb":
        bomb = await asyncio.to_thread(gzip_bomb)
        response.headers["Content-Encoding"] = "gzip"
        response.content_length = len(bomb)
        await response.prepare(request)
        await response.write_eof(bomb)
        return response
    response.content_length = mib * _MIB
    await response.prepare(request)
    block = b" " * _MIB
    for _ in range(mib):
        await response.write(block)
    await response.write_eof()
    return response
