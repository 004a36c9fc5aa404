"""`python -m byorouter_keystore [serve|migrate|init-keyring]`: run, migrate or set up keystore."""

from byorouter_common.lean_imports import imported_without, keep_out

# faststream imports uvicorn (with click and watchfiles) whenever it is installed, for an ASGI
# mode this service never runs: kept out, the process is about 3 MiB smaller resident.
keep_out("uvicorn")

# aiohttp (8 MiB resident) is for webhooks only: nats-py would load it at start for a WebSocket
# transport never dialled (NATS_URL is nats://); the webhook sender loads it at its first
# delivery, so a keystore whose apps have no webhooks never does.
with imported_without("aiohttp"):
    from byorouter_common.service import run_service
    from byorouter_keystore.service import SERVICE
    from byorouter_keystore.settings import KeystoreSettings

if __name__ == "__main__":
    run_service(SERVICE, KeystoreSettings())
