"""`python -m byorouter_connect`: join the bus, then serve the Connect HTTP app until stopped."""

from __future__ import annotations

from byorouter_common.service import ServiceRuntime, run_service, serve_http
from byorouter_connect.app import create_app
from byorouter_connect.settings import ConnectSettings


async def main(runtime: ServiceRuntime) -> None:
    settings = runtime.settings
    assert isinstance(settings, ConnectSettings)
    await runtime.start()
    await serve_http(runtime, create_app(runtime), host=settings.host, port=settings.port)


if __name__ == "__main__":
    run_service(
        "connect",
        ConnectSettings(),
        main,
        description="Connect UI and authorization flow for BYORouter.",
    )
