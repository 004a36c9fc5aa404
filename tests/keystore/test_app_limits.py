"""An app's rate limits: set by id or client id, only what is given changes, the key check
brings them to the gateway, and every change is announced."""

from __future__ import annotations

import hashlib

import pytest
from nats.aio.client import Client as NatsClient

from byorouter_common.bus import Bus
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError
from tests.keystore.conftest import EventListener, new_app

pytestmark = pytest.mark.usefixtures("keystore")


async def test_limits_set_by_app_id_or_client_id_change_only_what_is_given(
    bus: Bus, nc: NatsClient
) -> None:
    app = await new_app(bus)
    unset = await bus.request(ks.APP_LIMITS_SET, ks.AppLimitsSet(app=app.app_id))
    assert unset.limits == ks.AppRateLimits()
    listener = await EventListener(events.APP_LIMITS_CHANGED).start(nc)
    try:
        await bus.request(
            ks.APP_LIMITS_SET,
            ks.AppLimitsSet(app=app.app_id, limits=ks.AppRateLimits(rps=50, burst=80)),
        )
        changed = await listener.next(within_s=1.0)
        both = await bus.request(
            ks.APP_LIMITS_SET,
            ks.AppLimitsSet(app=app.client_id, limits=ks.AppRateLimits(connection_rps=0)),
        )
        await listener.next(within_s=1.0)
    finally:
        await listener.stop()
    assert changed.app_id == app.app_id
    assert both.limits == ks.AppRateLimits(rps=50, burst=80, connection_rps=0)

    key = app.app_api_key.get_secret_value()
    principal = await bus.request(
        ks.APP_AUTHENTICATE,
        ks.AppAuthenticate(key_id=app.key_id, key_hash=hashlib.sha256(key.encode()).hexdigest()),
    )
    assert principal.limits == both.limits

    reset = await bus.request(ks.APP_LIMITS_SET, ks.AppLimitsSet(app=app.app_id, reset=True))
    assert reset.limits == ks.AppRateLimits()


async def test_limits_of_an_unknown_app_are_a_404(bus: Bus) -> None:
    with pytest.raises(ByoError) as refused:
        await bus.request(ks.APP_LIMITS_SET, ks.AppLimitsSet(app="app_doesnotexist"))
    assert (refused.value.status, refused.value.code) == (404, "app_not_found")
