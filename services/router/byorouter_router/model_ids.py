"""Which provider a model id names: `openai/gpt-4o`, `selfhosted/llama3`, `default/<model>`.

A model id starts with the provider it is sent to; the rest is the upstream's own id (which may
hold more slashes, as OpenRouter's do). Errors quote the model id only when it looks like one
(a short slug such as `google/gemini-2.5-flash-lite`): it is input the app sent and may be
anything.
"""

from __future__ import annotations

import re
from typing import Any, Final

from byorouter_common import errors
from byorouter_common.contracts.keystore import PROVIDERS
from byorouter_common.errors import ByoError
from byorouter_router.credentials import ConnectionCredentials
from byorouter_router.fallback import APP_DEFAULT

# Every provider prefix a model id may carry; `default` is the app's own provider.
KNOWN_PREFIXES: Final = frozenset((*PROVIDERS, APP_DEFAULT))
# What is safe to say back: a vendor/model slug, as OpenRouter's ids are.
_SLUG: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}(/[A-Za-z0-9._:-]{1,64}){1,2}")


def choose_provider(model_id: Any, connection: ConnectionCredentials) -> tuple[str, str]:
    """(provider, upstream model) for a provider-prefixed model id such as `openai/gpt-4o`."""
    if not isinstance(model_id, str) or not model_id:
        raise errors.bad_request("The request has no model.", param="model")
    prefix, _, model = model_id.partition("/")
    if prefix == APP_DEFAULT:
        return APP_DEFAULT, _app_default_model(model, connection)
    if model and prefix not in KNOWN_PREFIXES and _SLUG.fullmatch(model_id):
        raise _vendor_prefix(prefix, model_id, connection)
    if not model or prefix not in KNOWN_PREFIXES:
        raise ByoError(
            404,
            "model_not_found",
            "Model ids start with a provider, e.g. openai/gpt-4o or selfhosted/llama3. "
            + _has(connection),
            param="model",
        )
    if prefix in connection.blocked:
        # The chat path refuses it (403, provider_not_allowed) and falls back if it can.
        return prefix, model
    if prefix not in connection.providers:
        raise ByoError(
            404,
            "model_not_found",
            f"This connection has no {prefix} provider. " + _has(connection),
            param="model",
        )
    return prefix, model


def _vendor_prefix(prefix: str, model_id: str, connection: ConnectionCredentials) -> ByoError:
    """A model named by its vendor (`google/…`, as many apps default to): OpenRouter reaches it."""
    through = f"openrouter/{model_id}"
    if "openrouter" in connection.providers:
        how = f"Ask for {through} to reach it through the user's OpenRouter key."
    else:
        how = (
            f"{through} would reach it through an OpenRouter key, but this connection has no "
            "openrouter provider. " + _has(connection)
        )
    return ByoError(
        404,
        "model_not_found",
        f"BYORouter has no provider {prefix} (model ids start with one of: "
        f"{', '.join(sorted(PROVIDERS))}). {how}",
        param="model",
    )


def _app_default_model(model: str, connection: ConnectionCredentials) -> str:
    """The upstream model for `default/<model>`; `default` or `default/` mean the configured one.

    The app's default serves every connection of the app, whatever `fallback_to_default` says:
    that setting is about falling back to it, not about asking for it.
    """
    default = connection.app_default
    if default is None:
        raise ByoError(
            404,
            "model_not_found",
            "This app has no default provider (byorouter app set-default). " + _has(connection),
            param="model",
        )
    chosen = model or default.preferred_model
    if not chosen:
        raise ByoError(
            404,
            "model_not_found",
            "The app's default provider has no model set: ask for default/<model>.",
            param="model",
        )
    return chosen


def _has(connection: ConnectionCredentials) -> str:
    names = connection.provider_names
    return (
        f"This connection has: {', '.join(names)}."
        if names
        else ("This connection has no providers.")
    )
