"""keystore's one-shot commands beside `serve`: migrate the database, create the keyring file."""

from __future__ import annotations

import logging
import stat
import sys

from byorouter_keystore.crypto import KeyringStore, init_keyring_file
from byorouter_keystore.db import safe_url, upgrade_database
from byorouter_keystore.settings import KeystoreSettings

log = logging.getLogger("byorouter_keystore")


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


def migrate(settings: KeystoreSettings) -> None:
    """alembic upgrade head against DATABASE_URL."""
    log.info("migrating database", extra={"database": safe_url(settings.database_url)})
    upgrade_database(settings.database_url)


def init_keyring(settings: KeystoreSettings) -> None:
    """Create BYOROUTER_KEYRING_FILE if it does not exist."""
    if settings.keyring is not None:
        sys.exit("byorouter-keystore: BYOROUTER_KEYRING is set; there is no keyring file to create")
    path = settings.keyring_file
    created = init_keyring_file(path)
    print(f"{'created' if created else 'kept existing'} keyring file {path}")


COMMANDS = {"migrate": migrate, "init-keyring": init_keyring}
