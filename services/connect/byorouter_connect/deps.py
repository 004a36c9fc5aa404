"""What a route needs from the app it runs in: the bus to keystore and router, and settings."""

from __future__ import annotations

from starlette.requests import Request

from byorouter_common.bus import Bus
from byorouter_common.service import ServiceRuntime
from byorouter_connect.settings import ConnectSettings


def runtime_of(request: Request) -> ServiceRuntime[ConnectSettings]:
    runtime: ServiceRuntime[ConnectSettings] = request.app.state.runtime
    return runtime


def bus_of(request: Request) -> Bus:
    return runtime_of(request).bus


def settings_of(request: Request) -> ConnectSettings:
    return runtime_of(request).settings
