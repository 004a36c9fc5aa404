"""What a failed bus call means to the caller: no responders 503, too large 413, timeout 504."""

from __future__ import annotations

import asyncio

import nats.errors

from byorouter_common import errors
from byorouter_common.errors import ByoError


def bus_error(exc: BaseException, what: str, timeout_s: float) -> ByoError:
    if isinstance(exc, nats.errors.NoRespondersError):
        return errors.unavailable(f"No {what} service is running.")
    if isinstance(exc, nats.errors.MaxPayloadError):
        return errors.too_large("Request is larger than the message bus accepts (1 MiB).")
    if isinstance(exc, asyncio.TimeoutError | nats.errors.TimeoutError):
        return errors.timeout(f"The {what} service did not answer within {timeout_s:g}s.")
    return errors.unavailable("The message bus is unavailable.")
