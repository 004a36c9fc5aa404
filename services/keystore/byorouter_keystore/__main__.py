"""`python -m byorouter_keystore [serve|migrate|init-keyring]`: run, migrate or set up keystore."""

from byorouter_common.service import run_service
from byorouter_keystore.service import SERVICE
from byorouter_keystore.settings import KeystoreSettings

if __name__ == "__main__":
    run_service(SERVICE, KeystoreSettings())
