"""The paced scenario of `make bench`: 200 concurrent streams whose upstream sends one event every
20 ms (50 tokens/s), straight to the fake upstream and through BYORouter (gateway -> router ->
the same fake), one after the other in the same run.

What a user of many slow streams notices: the tokens per second all streams together get
(BYORouter's as a share of direct), and how long each waits for its first token (p50/p99,
through minus direct). Each of the streams runs on its own keep-alive connection and starts its
next stream as soon as one ends, until the measured seconds are over.

The client is raw asyncio streams (as `loadgen`), not an HTTP library: 200 streams at 50 events/s
are 10,000 events a second on the same two cores as the services it measures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

import orjson

from bench.loadgen import build_request

STREAMS = 200
PACE_MS = 20  # one event every 20 ms: 50 tokens/s
WORDS = 50
_EVENT = b"data: {"


@dataclass
class PacedResult:
    streams: int = 0
    tokens: int = 0
    errors: int = 0
    seconds: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def ttft(self, p: float) -> float:
        if not self.ttft_ms:
            return float("nan")
        if p == 50:
            return statistics.median(self.ttft_ms)
        ordered = sorted(self.ttft_ms)
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def paced_body(model: str, words: int = WORDS) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(words))}],
        }
    )


async def _one_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, result: PacedResult
) -> None:
    """Send one streamed request and read its chunked SSE answer to the end."""
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if int(head[9:12]) != 200 or b"transfer-encoding: chunked" not in head.lower():
        # An error answer carries its length: read it, so the connection stays usable.
        lower = head.lower()
        marker = lower.find(b"content-length:")
        if marker != -1:
            end = lower.index(b"\r\n", marker)
            await reader.readexactly(int(lower[marker + 15 : end]))
        result.errors += 1
        return
    events = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            break
        # Every write of the gateway and of the fake holds whole events.
        found = chunk.count(_EVENT)
        if found and events == 0:
            result.ttft_ms.append((time.perf_counter() - started) * 1000)
        events += found
    result.streams += 1
    result.tokens += events


async def _worker(
    host: str, port: int, request: bytes, deadline: float, result: PacedResult
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            await _one_stream(reader, writer, request, result)
            if time.perf_counter() >= deadline:
                return
    except (OSError, asyncio.IncompleteReadError, ValueError):
        result.errors += 1
    finally:
        writer.close()


async def run_paced(
    url: str, body: bytes, headers: dict[str, str], *, seconds: float, streams: int = STREAMS
) -> PacedResult:
    """`streams` connections streaming back to back for `seconds`, after one warm-up stream
    each (connections open, caches and upstream pools filled)."""
    host, port, request = build_request(url, body, headers)
    await asyncio.gather(
        *(_worker(host, port, request, 0.0, PacedResult()) for _ in range(streams))
    )
    result = PacedResult()
    started = time.perf_counter()
    await asyncio.gather(
        *(_worker(host, port, request, started + seconds, result) for _ in range(streams))
    )
    result.seconds = time.perf_counter() - started
    return result
