"""What every fake upstream shares: an aiohttp server on loopback, and what tests read back.

Each fake records the requests it received (under a tag the test chooses) and counts clients that
went away mid-answer, and serves both at `/_fake/requests?tag=` and `/_fake/disconnects?tag=`,
so tests in other processes can assert what the upstream saw. A provider's fake subclasses this
and adds its API routes in `api_routes`.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from typing import Any, ClassVar, Final

import orjson
from aiohttp import web

DEFAULT_STREAM_CHUNKS: Final = 20
# Bounded, so a long benchmark run against a fake never grows it without limit.
DEFAULT_MAX_RECORDED: Final = 20_000
JSON: Final = "application/json"
# The headers of every fake's event stream, as the real providers send them.
SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}


class FakeUpstream:
    """The fake server; `await start(host, port)` in-process, `await stop()` when done."""

    client_max_size: ClassVar[int] = 8 * 2**20

    def __init__(
        self,
        *,
        stream_chunks: int = DEFAULT_STREAM_CHUNKS,
        max_recorded: int = DEFAULT_MAX_RECORDED,
    ) -> None:
        self.stream_chunks = stream_chunks
        self.host = "127.0.0.1"
        self.port = 0
        self._recorded: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self._disconnects: Counter[str] = Counter()
        self._parked: set[asyncio.Future[None]] = set()
        self._runner: web.AppRunner | None = None

    def api_routes(self, app: web.Application) -> None:
        """Add the provider's own API routes."""
        raise NotImplementedError

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.client_max_size)
        self.api_routes(app)
        app.router.add_get("/_fake/requests", self.recorded_requests)
        app.router.add_get("/_fake/disconnects", self.recorded_disconnects)
        app.router.add_post("/_fake/reset", self.reset)
        return app

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on `host:port` (port 0 picks a free one; read it back from `self.port`)."""
        # handler_cancellation: a client that goes away cancels its handler at once, which is
        # how a hanging or dripping answer notices the disconnect within milliseconds.
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        for parked in list(self._parked):
            parked.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """The fake's root URL."""
        return f"http://{self.host}:{self.port}"

    # --- what tests read back -------------------------------------------------------------

    def requests(self, tag: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self._recorded if tag is None or r["tag"] == tag]

    def disconnects(self, tag: str | None = None) -> int:
        return self._disconnects.total() if tag is None else self._disconnects[tag]

    async def recorded_requests(self, request: web.Request) -> web.Response:
        body = orjson.dumps(self.requests(request.query.get("tag")))
        return web.Response(body=body, content_type=JSON)

    async def recorded_disconnects(self, request: web.Request) -> web.Response:
        body = orjson.dumps({"count": self.disconnects(request.query.get("tag"))})
        return web.Response(body=body, content_type=JSON)

    async def reset(self, request: web.Request) -> web.Response:
        self._recorded.clear()
        self._disconnects.clear()
        return web.Response(body=b"{}", content_type=JSON)

    def _record(self, request: web.Request, body: Any, tag: str) -> None:
        self._recorded.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {str(k): v for k, v in request.headers.items()},
                "body": body,
                "tag": tag,
            }
        )

    async def _park(self) -> None:
        """Wait until the client goes away or the fake stops: a hanging upstream."""
        parked = asyncio.get_running_loop().create_future()
        self._parked.add(parked)
        try:
            await parked
        finally:
            self._parked.discard(parked)
