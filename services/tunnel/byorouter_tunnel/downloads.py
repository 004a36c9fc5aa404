"""The tunnel client, downloadable from this deployment: users install it with pip from here.

`byorouter-tunnel` is not on a public index, so the tunnel service serves the wheel that
`make install` (or the container build) made of `clients/tunnel`: `GET /client` says how to install
it, `GET /client/<wheel file>` is the wheel itself, and `GET /client/requirements.txt` is the
client's lock (every dependency pinned with its hashes, `clients/tunnel/requirements.lock`) plus
the wheel with its own hash. `pip install --require-hashes -r <that URL>` then installs nothing
that differs from what this deployment was tested with, whatever the user's index serves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response

import byorouter_tunnel_client


def default_dist_dir() -> Path:
    """Where `make install` puts the client's wheel: `clients/tunnel/dist` beside its source."""
    return Path(byorouter_tunnel_client.__file__).resolve().parents[1] / "dist"


# Copied beside the wheel by `make install` and the image build, so the dist directory is whole.
LOCK_NAME = "requirements.lock"


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
        if (dist_dir / LOCK_NAME).is_file():
            url = str(request.url_for("client_requirements"))
            command = f"pip install --require-hashes -r {url}"
        else:
            wheel_url = request.url_for("client_wheel", filename=wheels[-1].name)
            command = f"pip install {wheel_url}"
        return (
            "Install the BYORouter tunnel client on the machine that runs your model server:\n\n"
            f"    {command}\n\n"
            "Then run the command your Connect page or app showed you.\n"
        )

    # Declared before the wheel route, which would otherwise take this name as a file name.
    @router.get("/client/requirements.txt", name="client_requirements")
    async def client_requirements(request: Request) -> Response:
        wheels = _wheels(dist_dir)
        lock = dist_dir / LOCK_NAME
        if not wheels or not lock.is_file():
            raise HTTPException(404, "The tunnel client package is not available here.")
        wheel = wheels[-1]
        url = str(request.url_for("client_wheel", filename=wheel.name))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        text = (
            lock.read_text()
            + "\n# The client itself, from this deployment.\n"
            + f"byorouter-tunnel @ {url} \\\n    --hash=sha256:{digest}\n"
        )
        return PlainTextResponse(text)

    @router.get("/client/{filename}", name="client_wheel")
    async def client_wheel(filename: str) -> FileResponse:
        for wheel in _wheels(dist_dir):
            if wheel.name == filename:
                return FileResponse(wheel, media_type="application/octet-stream")
        raise HTTPException(404, "No such file.")

    return router
