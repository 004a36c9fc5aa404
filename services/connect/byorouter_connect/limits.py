"""How often the Test buttons may run: per client IP and per app, per Connect copy.

Anyone with an app's public authorize URL can press Test, and each press makes the router call
a provider (or a server) of the caller's choosing: unthrottled, that is an oracle for checking
stolen keys. A refusal is a 429 with Retry-After, as JSON for the page's script or as a page.
"""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from byorouter_common.contracts import router as rt
from byorouter_common.errors import ByoError
from byorouter_common.rate_limit import TokenBuckets, client_ip
from byorouter_connect.pages import PageError, error_page
from byorouter_connect.settings import ConnectSettings

_MESSAGE = "Too many tests from here; wait a minute, then test again."


class TooManyTests(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(_MESSAGE)
        self.retry_after_s = retry_after_s


class ProviderTestLimits:
    """Token buckets per client IP and per app; a press spends from both or from neither."""

    def __init__(self, settings: ConnectSettings) -> None:
        self.per_ip = TokenBuckets.per_minute(settings.provider_tests_per_ip_per_min, _MESSAGE)
        self.per_app = TokenBuckets.per_minute(settings.provider_tests_per_app_per_min, _MESSAGE)

    def take(self, request: Request, app_id: str | None) -> None:
        """Allow one Test for this request's client (and app, if known) or raise `TooManyTests`."""
        ip = client_ip(request)
        try:
            self.per_ip.check(ip)
            if app_id is not None:
                self.per_app.check(app_id)
        except ByoError as exc:
            raise TooManyTests(exc.retry_after or 60.0) from None
        self.per_ip.spend(ip)
        if app_id is not None:
            self.per_app.spend(app_id)


def limits_of(request: Request) -> ProviderTestLimits:
    limits: ProviderTestLimits = request.app.state.provider_test_limits
    return limits


async def too_many_tests(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TooManyTests)
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if "application/json" in request.headers.get("accept", ""):
        result = rt.ProviderTestResult(ok=False, message=_MESSAGE)
        return JSONResponse(result.model_dump(mode="json"), status_code=429, headers=headers)
    page = error_page(PageError(429, "Too many tests", _MESSAGE))
    page.headers.update(headers)
    return page
