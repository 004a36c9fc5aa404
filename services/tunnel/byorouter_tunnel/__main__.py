"""`python -m byorouter_tunnel`: the tunnel clients' WebSocket endpoint on the bus until stopped."""

from byorouter_common.service import run_service
from byorouter_tunnel.app import SERVICE
from byorouter_tunnel.settings import TunnelSettings

if __name__ == "__main__":
    run_service(SERVICE, TunnelSettings())
