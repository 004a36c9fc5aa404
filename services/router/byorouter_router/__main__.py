"""`python -m byorouter_router`: chat requests and model lists on the bus until stopped."""

from byorouter_common.service import run_service
from byorouter_router.handlers import SERVICE
from byorouter_router.settings import RouterSettings

if __name__ == "__main__":
    run_service(SERVICE, RouterSettings())
