"""`python -m byorouter_connect`: the Connect pages and authorization flow until stopped."""

import sys

# nats-py loads aiohttp only for a WebSocket transport this service never dials (NATS_URL is
# nats://): kept out, the process is 9 MiB smaller resident (measured). Router and keystore use it.
sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]

from byorouter_common.service import run_service  # noqa: E402
from byorouter_connect.app import SERVICE  # noqa: E402
from byorouter_connect.settings import ConnectSettings  # noqa: E402

if __name__ == "__main__":
    run_service(SERVICE, ConnectSettings())
