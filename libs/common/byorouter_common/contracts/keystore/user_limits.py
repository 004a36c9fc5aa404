"""Limits the end user sets on what one app may use of their connection; served by keystore.

The router checks allowed models itself (the limits come with the resolved connection) and asks
`limits.admit` once per request only for a connection with a request or token cap.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, field_validator

from byorouter_common.contracts.base import Contract, Endpoint
from byorouter_common.contracts.keystore.names import SERVICE

USER_LIMIT_REACHED = "user_limit_reached"
MODEL_NOT_ALLOWED = "model_not_allowed"


class UserLimits(Contract):
    """Caps the user set: None is no cap; an empty model list allows every model."""

    requests_per_day: int | None = Field(default=None, ge=1, le=100_000_000)
    tokens_per_month: int | None = Field(default=None, ge=1, le=1_000_000_000_000)
    allowed_models: list[str] = Field(default_factory=list, max_length=50)

    @field_validator("allowed_models")
    @classmethod
    def _clean(cls, models: list[str]) -> list[str]:
        cleaned: list[str] = []
        for model in models:
            model = model.strip()
            if len(model) > 200:
                raise ValueError("a model id is at most 200 characters")
            if model and model not in cleaned:
                cleaned.append(model)
        return cleaned

    @property
    def counted(self) -> bool:
        """Whether a request needs keystore's shared counters (a request or token cap)."""
        return self.requests_per_day is not None or self.tokens_per_month is not None

    @property
    def any(self) -> bool:
        return self.counted or bool(self.allowed_models)


class LimitsStatus(UserLimits):
    """The limits and what is left of them (UTC day and month)."""

    requests_today: int = 0
    requests_left: int | None = None
    requests_reset_at: datetime
    tokens_this_month: int = 0
    tokens_left: int | None = None
    tokens_reset_at: datetime


class LimitsAdmit(Contract):
    app_id: str
    connection_id: str


class LimitsAdmitted(Contract):
    connection_id: str
    requests_today: int


LIMITS_ADMIT = Endpoint(
    "byorouter.keystore.limits.admit",
    LimitsAdmit,
    LimitsAdmitted,
    SERVICE,
    "Count one request against the connection's user limits, or refuse it (429). Router only.",
)
