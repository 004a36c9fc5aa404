"""`python -m byorouter_router`: chat requests and model lists on the bus until stopped."""

from byorouter_common.lean_imports import keep_out

# faststream imports uvicorn (with click and watchfiles) whenever it is installed, for an ASGI
# mode this service never runs: kept out, the process is about 3 MiB smaller resident.
keep_out("uvicorn")

from byorouter_common.service import run_service  # noqa: E402
from byorouter_router.handlers import SERVICE  # noqa: E402
from byorouter_router.settings import RouterSettings  # noqa: E402

if __name__ == "__main__":
    run_service(SERVICE, RouterSettings())
