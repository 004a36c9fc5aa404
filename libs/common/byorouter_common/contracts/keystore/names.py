"""Names every keystore contract module shares: the serving service and the provider names."""

from __future__ import annotations

from typing import Final, Literal

SERVICE: Final = "keystore"

ProviderName = Literal["openai", "anthropic", "openrouter", "selfhosted"]
PROVIDERS: tuple[ProviderName, ...] = ("openai", "anthropic", "openrouter", "selfhosted")
