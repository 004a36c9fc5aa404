"""The user's limits on an app, as the chat path applies them.

Allowed models are checked here from the cached connection; request and token caps are counted
by keystore (`limits.admit`), so every router copy shares one count. A connection without
limits never gets here: it costs the hot path one `is None` test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from byorouter_common.contracts.keystore.user_limits import (
    MODEL_NOT_ALLOWED,
    LimitsAdmit,
    LimitsAdmitted,
    UserLimits,
)
from byorouter_common.errors import ByoError
from byorouter_router.fallback import Candidate

Admit = Callable[[LimitsAdmit], Awaitable[LimitsAdmitted]]


def allows(limits: UserLimits, candidate: Candidate) -> bool:
    """Whether the user lets the app use this model; an id without a provider matches any."""
    if not limits.allowed_models:
        return True
    allowed = limits.allowed_models
    return f"{candidate.provider}/{candidate.model}" in allowed or candidate.model in allowed


def model_not_allowed(limits: UserLimits, candidate: Candidate) -> ByoError:
    return ByoError(
        403,
        MODEL_NOT_ALLOWED,
        f"The user lets this app use only these models: {', '.join(limits.allowed_models)}. "
        f"Ask for one of them, or ask the user to allow {candidate.provider}/{candidate.model} "
        "on BYORouter's Manage page.",
        type="permission_error",
        param="model",
    )


async def admit(
    admit_call: Admit, limits: UserLimits, app_id: str, connection_id: str, requested: Candidate
) -> None:
    """Refuse a model the user did not allow (403), then count the request (429 once over)."""
    if not allows(limits, requested):
        raise model_not_allowed(limits, requested)
    if limits.counted:
        await admit_call(LimitsAdmit(app_id=app_id, connection_id=connection_id))
