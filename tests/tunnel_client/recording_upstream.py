"""A tiny model server that records what reached it and can answer with a redirect, so tests
can see the headers the client sends and that it never follows a redirect elsewhere."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class RecordingUpstream:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _any(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": "local-llama"}]})
        if b"redirect-me" in body:
            # Somewhere on the user's network the tunnel must never be steered to.
            raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{self.port}/admin/secret")
        return web.json_response({"path": request.path})

    def paths(self) -> list[str]:
        return [r["path"] for r in self.seen]
