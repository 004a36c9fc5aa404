"""`python -m byorouter_keystore [serve|migrate|init-keyring]`: run, migrate or set up keystore."""

from __future__ import annotations

import argparse
import logging
import stat
import sys

from sqlalchemy import exc as sa_exc

from byorouter_common.bus import map_dependency_errors
from byorouter_common.logging import setup_logging
from byorouter_common.service import ServiceRuntime, run_service
from byorouter_keystore.connect_handlers import ConnectFlowHandlers
from byorouter_keystore.crypto import KeyringError, KeyringStore, init_keyring_file
from byorouter_keystore.db import create_engine, safe_url, session_factory, upgrade_database
from byorouter_keystore.handlers import KeystoreHandlers
from byorouter_keystore.settings import KeystoreSettings

log = logging.getLogger("byorouter_keystore")

DESCRIPTION = "Apps, app keys, connections and envelope-encrypted provider credentials."


def load_keyring(settings: KeystoreSettings) -> KeyringStore:
    """The inline keyring if BYOROUTER_KEYRING is set, else the keyring file, which must exist."""
    if settings.keyring is not None:
        return KeyringStore.from_inline(settings.keyring.get_secret_value())
    store = KeyringStore.from_file(settings.keyring_file)
    if settings.keyring_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "keyring file is readable by other users; chmod 600 it",
            extra={"keyring_file": str(settings.keyring_file)},
        )
    return store


def serve(settings: KeystoreSettings) -> None:
    try:
        # Before anything starts: a keystore without its keys must not answer a single request.
        keyring = load_keyring(settings)
    except KeyringError as exc:
        sys.exit(f"byorouter-keystore: {exc}")

    # PostgreSQL gone (refused, restarting, pool exhausted) is an outage to report as such.
    map_dependency_errors(
        (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError),
        "The key store's database is unavailable; try again shortly.",
    )

    async def main(runtime: ServiceRuntime) -> None:
        engine = create_engine(settings.database_url)
        try:
            sessions = session_factory(engine)
            KeystoreHandlers(runtime, sessions, keyring, settings.rewrap_batch_size).register()
            ConnectFlowHandlers(runtime, sessions, keyring).register()
            await runtime.start()
            log.info(
                "keystore serving",
                extra={
                    "database": safe_url(settings.database_url),
                    "kek_active_version": keyring.current.active,
                },
            )
            await runtime.stopped.wait()
        finally:
            await engine.dispose()

    run_service("keystore", settings, main, description=DESCRIPTION)


def migrate(settings: KeystoreSettings) -> None:
    setup_logging("keystore", settings.log_level, settings.log_format)
    log.info("migrating database", extra={"database": safe_url(settings.database_url)})
    upgrade_database(settings.database_url)


def init_keyring(settings: KeystoreSettings) -> None:
    if settings.keyring is not None:
        sys.exit("byorouter-keystore: BYOROUTER_KEYRING is set; there is no keyring file to create")
    path = settings.keyring_file
    created = init_keyring_file(path)
    print(f"{'created' if created else 'kept existing'} keyring file {path}")


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m byorouter_keystore", description=DESCRIPTION)
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "migrate", "init-keyring"),
        help="serve (default): answer on NATS; migrate: alembic upgrade head against "
        "DATABASE_URL; init-keyring: create BYOROUTER_KEYRING_FILE if it does not exist",
    )
    args = parser.parse_args(argv)
    settings = KeystoreSettings()
    {"serve": serve, "migrate": migrate, "init-keyring": init_keyring}[args.command](settings)


if __name__ == "__main__":
    cli()
