"""`python -m byorouter_gateway`: the OpenAI-compatible HTTP API on the bus until stopped."""

from byorouter_common.service import run_service
from byorouter_gateway.main import SERVICE
from byorouter_gateway.settings import GatewaySettings

if __name__ == "__main__":
    run_service(SERVICE, GatewaySettings())
