"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending the same
request back to back, recording the latency of every complete response.

Written on raw asyncio streams (under uvloop) rather than an HTTP client library so that the
client's own CPU cost stays far below the server's: on a 2-core machine the load generator
shares the cores with the gateway, router and fake upstream it measures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return self.percentile(99)


def build_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    marker = lower.find(b"content-length:")
    if marker != -1:
        end = lower.index(b"\r\n", marker)
        await reader.readexactly(int(lower[marker + 15 : end]))
        return status
    if b"transfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return status
    raise RuntimeError("response without length")


async def _worker(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            elapsed = (time.perf_counter() - started) * 1000
            if status == 200:
                latencies.append(elapsed)
            else:
                errors.append(status)
    finally:
        writer.close()


async def run_load(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    concurrency: int,
    seconds: float,
    warmup_s: float = 1.0,
) -> LoadResult:
    """Drive `url` with `concurrency` connections for `seconds` after a warm-up period."""
    host, port, request = build_request(url, body, headers)
    if warmup_s > 0:
        await asyncio.gather(
            *(
                _worker(host, port, request, time.perf_counter() + warmup_s, [], [])
                for _ in range(concurrency)
            )
        )
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(_worker(host, port, request, deadline, latencies, errors) for _ in range(concurrency))
    )
    return LoadResult(len(latencies), len(errors), time.perf_counter() - started, latencies)
