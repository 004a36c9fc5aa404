"""`python -m byorouter_gateway`: the OpenAI-compatible HTTP API on the bus until stopped."""

import sys

# Packages loaded only for what this service never does, kept out (measured resident savings):
# aiohttp, which nats-py loads for a WebSocket transport never dialled (NATS_URL is nats://;
# 9 MiB; router and keystore use it), and watchfiles, uvicorn's reloader (1 MiB).
for unused in ("aiohttp", "watchfiles"):
    sys.modules.setdefault(unused, None)  # type: ignore[arg-type]

from byorouter_common.service import run_service  # noqa: E402
from byorouter_gateway.main import SERVICE  # noqa: E402
from byorouter_gateway.settings import GatewaySettings  # noqa: E402

if __name__ == "__main__":
    run_service(SERVICE, GatewaySettings())
