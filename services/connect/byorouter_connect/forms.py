"""Reading the provider fields of Connect's forms, and checking them without echoing a key.

Field names are `<provider>_api_key`, `<provider>_base_url`, `<provider>_model` and
`<provider>_priority` (1 is tried first), and `selfhosted_tunnel` ("on": the person's own server,
through a secure tunnel; its base URL is then only the direct address used while it is offline).
Keys live only in `ProviderValues.api_key` on their way to keystore or a test: templates never
receive them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from pydantic import SecretStr

from byorouter_common.contracts.keystore import PROVIDERS, ProviderCredentialInput, ProviderName
from byorouter_connect.pages import FORMS_BY_PROVIDER

MAX_KEY: Final = 1000
MAX_BASE_URL: Final = 2048
MAX_MODEL: Final = 200


@dataclass
class ProviderValues:
    """One provider's fields as submitted; `api_key` is never rendered back."""

    provider: ProviderName
    api_key: str = field(default="", repr=False)
    base_url: str = ""
    model: str = ""
    priority: int = 0
    # selfhosted only: reached through a secure tunnel (a direct base URL is then optional).
    tunnel: bool = False

    @property
    def filled(self) -> bool:
        """The person entered something for this provider (a key, a server URL, or a tunnel)."""
        return bool(self.api_key or self.base_url or self.tunnel)

    def shown(self) -> dict[str, str | int]:
        """What a re-rendered page may put back into the form: everything but the key.

        A base URL that is not one is left out too: it may be a key pasted into the wrong box.
        """
        base_url = self.base_url if is_http_url(self.base_url) else ""
        return {
            "base_url": base_url,
            "model": self.model,
            "priority": self.priority,
            "tunnel": int(self.tunnel),
        }

    def credential(self) -> ProviderCredentialInput:
        return ProviderCredentialInput(
            provider=self.provider,
            api_key=SecretStr(self.api_key) if self.api_key else None,
            base_url=self.base_url or None,
            preferred_model=self.model or None,
        )


def _priority(raw: str, default: int) -> int:
    return int(raw) if raw.isdigit() and 1 <= int(raw) <= len(PROVIDERS) else default


def provider_values(form: Mapping[str, str], provider: ProviderName) -> ProviderValues:
    """One provider's fields from `form` (field names `<provider>_...`)."""
    name = provider
    return ProviderValues(
        provider=provider,
        api_key=form.get(f"{name}_api_key", "").strip(),
        base_url=form.get(f"{name}_base_url", "").strip(),
        model=form.get(f"{name}_model", "").strip(),
        priority=_priority(form.get(f"{name}_priority", ""), PROVIDERS.index(provider) + 1),
        tunnel=provider == "selfhosted" and form.get(f"{name}_tunnel") == "on",
    )


def all_provider_values(form: Mapping[str, str]) -> dict[ProviderName, ProviderValues]:
    return {provider: provider_values(form, provider) for provider in PROVIDERS}


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host and no user:password part."""
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


def problems_of(values: ProviderValues, *, key_required: bool | None = None) -> list[str]:
    """What is wrong with one provider's fields, in words that never quote what was typed."""
    form = FORMS_BY_PROVIDER[values.provider]
    needs_key = form.key_required if key_required is None else key_required
    problems = []
    if needs_key and not values.api_key:
        problems.append(f"Enter your {form.title} key.")
    if len(values.api_key) > MAX_KEY:
        problems.append(f"That {form.title} key is too long to be a key.")
    if form.base_url_required and not values.base_url and not values.tunnel:
        problems.append("Enter your server's base URL.")
    too_long = len(values.base_url) > MAX_BASE_URL
    if values.base_url and (too_long or not is_http_url(values.base_url)):
        problems.append(
            f"The {form.title} base URL must be an http(s) URL without a user name or password."
        )
    if len(values.model) > MAX_MODEL:
        problems.append(f"A model id is at most {MAX_MODEL} characters.")
    return problems
