"""keystore's wiring: load the keyring, open the database, subscribe every handler; `SERVICE`."""

from __future__ import annotations

import logging
import sys

from sqlalchemy import exc as sa_exc

from byorouter_common.bus import map_dependency_errors
from byorouter_common.service import Service, ServiceRuntime
from byorouter_keystore.app_default import AppDefaultHandlers
from byorouter_keystore.apps import AppHandlers
from byorouter_keystore.bindings import BindingHandlers
from byorouter_keystore.commands import COMMANDS, load_keyring
from byorouter_keystore.connect_flow.consent import ConsentHandlers
from byorouter_keystore.connect_flow.manage import ManageHandlers
from byorouter_keystore.connections import ConnectionHandlers
from byorouter_keystore.crypto import KeyringError
from byorouter_keystore.db import create_engine, safe_url, session_factory
from byorouter_keystore.headless import HeadlessHandlers
from byorouter_keystore.housekeeping import HousekeepingHandlers
from byorouter_keystore.keys import KeyHandlers
from byorouter_keystore.provider_policy import ProviderPolicyHandlers
from byorouter_keystore.settings import KeystoreSettings
from byorouter_keystore.tunnels import TunnelHandlers
from byorouter_keystore.usage import UsageHandlers
from byorouter_keystore.user_limits import LimitsHandlers
from byorouter_keystore.webhooks import WebhookHandlers

log = logging.getLogger("byorouter_keystore")


async def register(runtime: ServiceRuntime[KeystoreSettings]) -> None:
    settings = runtime.settings
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
    engine = create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    runtime.on_stop(engine.dispose)
    sessions = session_factory(engine)
    AppHandlers(runtime, sessions, keyring).register()
    AppDefaultHandlers(runtime, sessions, keyring).register()
    ConnectionHandlers(runtime, sessions, keyring).register()
    UsageHandlers(runtime, sessions, keyring).register()
    keys = KeyHandlers(runtime, sessions, keyring, settings.rewrap_batch_size)
    keys.register()
    ConsentHandlers(runtime, sessions, keyring).register()
    ManageHandlers(runtime, sessions, keyring).register()
    TunnelHandlers(runtime, sessions, keyring).register()
    BindingHandlers(runtime, sessions, keyring).register()
    HeadlessHandlers(runtime, sessions, keyring).register()
    WebhookHandlers(runtime, sessions, keyring).register()
    ProviderPolicyHandlers(runtime, sessions, keyring).register()
    LimitsHandlers(runtime, sessions, keyring).register()
    HousekeepingHandlers(runtime, sessions, keyring).register()
    # Before any subscriber starts: a copy serves nothing until its KEK is confirmed.
    await keys.confirm_first()

    async def serving() -> None:
        log.info(
            "keystore serving",
            extra={
                "database": safe_url(settings.database_url),
                "kek_active_version": keyring.loaded.active,
            },
        )

    runtime.on_started(serving)


SERVICE = Service(
    "keystore",
    "Apps, app keys, connections and envelope-encrypted provider credentials.",
    register,
    commands=COMMANDS,
)
