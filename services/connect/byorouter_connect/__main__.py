"""`python -m byorouter_connect`: the Connect pages and authorization flow until stopped."""

from byorouter_common.lean_imports import keep_out

# Packages loaded only for what this service never does (measured resident savings): aiohttp,
# which nats-py loads for a WebSocket transport never dialled (NATS_URL is nats://; 9 MiB),
# watchfiles, uvicorn's reloader (1 MiB), and pydantic.v1, which FastAPI would load to check
# for version-1 models (we have none).
keep_out("aiohttp", "watchfiles", "pydantic.v1")

from byorouter_common.service import run_service  # noqa: E402
from byorouter_connect.app import SERVICE  # noqa: E402
from byorouter_connect.settings import ConnectSettings  # noqa: E402

if __name__ == "__main__":
    run_service(SERVICE, ConnectSettings())
