"""Names every keystore contract module shares: the serving service and the provider names."""

from __future__ import annotations

from typing import Final, Literal

SERVICE: Final = "keystore"

ProviderName = Literal["openai", "anthropic", "openrouter", "selfhosted"]
PROVIDERS: tuple[ProviderName, ...] = ("openai", "anthropic", "openrouter", "selfhosted")

# What an app's provider policy names: the four providers, with a self-hosted server split by
# how it is reached (`selfhosted`: a direct URL; `tunnel`: through a secure tunnel).
ProviderKind = Literal["openai", "anthropic", "openrouter", "selfhosted", "tunnel"]
PROVIDER_KINDS: tuple[ProviderKind, ...] = (
    "openai",
    "anthropic",
    "openrouter",
    "selfhosted",
    "tunnel",
)
