"""`python -m byorouter_gateway`: the OpenAI-compatible HTTP API on the bus until stopped."""

import sys

# nats-py loads aiohttp only for a WebSocket transport this service never dials (NATS_URL is
# nats://): kept out, the process is 9 MiB smaller resident (measured). Router and keystore use it.
sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]

from byorouter_common.service import run_service  # noqa: E402
from byorouter_gateway.main import SERVICE  # noqa: E402
from byorouter_gateway.settings import GatewaySettings  # noqa: E402

if __name__ == "__main__":
    run_service(SERVICE, GatewaySettings())
