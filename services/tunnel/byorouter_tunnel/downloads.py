"""The tunnel client, downloadable from this deployment: users install it with pip from here.

`byorouter-tunnel` is not on a public index, so the tunnel service serves the wheel that
`make install` (or the container build) made of `clients/tunnel`: `GET /client` says how to install
it, `GET /client/<wheel file>` is the wheel itself, which pip installs from its URL (its three
dependencies come from the user's usual index).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, PlainTextResponse

import byorouter_tunnel_client


def default_dist_dir() -> Path:
    """Where `make install` puts the client's wheel: `clients/tunnel/dist` beside its source."""
    return Path(byorouter_tunnel_client.__file__).resolve().parents[1] / "dist"


def _wheels(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(directory.glob("byorouter_tunnel-*-py3-none-any.whl"))


def downloads_router(dist_dir: Path) -> APIRouter:
    router = APIRouter(tags=["client"])

    @router.get("/client", response_class=PlainTextResponse)
    async def how_to_install(request: Request) -> str:
        wheels = _wheels(dist_dir)
        if not wheels:
            raise HTTPException(404, "The tunnel client package is not available here.")
        url = str(request.url_for("client_wheel", filename=wheels[-1].name))
        return (
            "Install the BYORouter tunnel client on the machine that runs your model server:\n\n"
            f"    pip install {url}\n\n"
            "Then run the command your Connect page or app showed you.\n"
        )

    @router.get("/client/{filename}", name="client_wheel")
    async def client_wheel(filename: str) -> FileResponse:
        for wheel in _wheels(dist_dir):
            if wheel.name == filename:
                return FileResponse(wheel, media_type="application/octet-stream")
        raise HTTPException(404, "No such file.")

    return router
