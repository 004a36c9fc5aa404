"""The limits form a person fills in on the Connect and Manage pages: what this app may use.

Blank fields mean no cap; the models field takes ids separated by commas or new lines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import ValidationError

from byorouter_common.contracts.keystore.user_limits import UserLimits

_SEPARATORS = re.compile(r"[\s,]+")
# The form's fields, the same on both pages.
LIMIT_FIELDS = ("limit_requests_per_day", "limit_tokens_per_month", "limit_models")


def _whole_number(raw: str, what: str, problems: list[str]) -> int | None:
    raw = raw.strip().replace("_", "")
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        problems.append(f"{what} must be a whole number of at least 1, or left blank for no limit.")
        return None
    return int(raw)


def limits_from_form(form: Mapping[str, str]) -> UserLimits | list[str]:
    """The limits typed in the form, or the problems to show the person."""
    problems: list[str] = []
    requests = _whole_number(form.get("limit_requests_per_day", ""), "Requests a day", problems)
    tokens = _whole_number(form.get("limit_tokens_per_month", ""), "Tokens a month", problems)
    models = [m for m in _SEPARATORS.split(form.get("limit_models", "")) if m]
    if problems:
        return problems
    try:
        return UserLimits(requests_per_day=requests, tokens_per_month=tokens, allowed_models=models)
    except ValidationError as exc:
        return [
            "Limits not saved: "
            + "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            + "."
        ]
