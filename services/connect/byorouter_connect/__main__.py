"""`python -m byorouter_connect`: the Connect pages and authorization flow until stopped."""

from byorouter_common.service import run_service
from byorouter_connect.app import SERVICE
from byorouter_connect.settings import ConnectSettings

if __name__ == "__main__":
    run_service(SERVICE, ConnectSettings())
