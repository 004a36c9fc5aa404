"""`python -m byorouter_router`: serve chat requests and model lists on NATS until stopped."""

from __future__ import annotations

from byorouter_common.service import ServiceRuntime, run_service
from byorouter_router.handlers import RouterHandlers
from byorouter_router.settings import RouterSettings

DESCRIPTION = "Calls the connection's providers for chat requests and streams the answers back."


async def serve_router(runtime: ServiceRuntime, settings: RouterSettings) -> None:
    router = RouterHandlers(runtime, settings)
    router.register()
    await runtime.start()
    await router.start()
    try:
        await runtime.stopped.wait()
    finally:
        await router.stop()


def main() -> None:
    settings = RouterSettings()

    async def run(runtime: ServiceRuntime) -> None:
        await serve_router(runtime, settings)

    run_service("router", settings, run, description=DESCRIPTION)


if __name__ == "__main__":
    main()
