"""Model ids name their provider first; a bad one is refused with what the connection has."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from byorouter_common.errors import ByoError
from byorouter_router.credentials import ConnectionCredentials
from byorouter_router.model_ids import choose_provider
from byorouter_router.providers.base import ProviderCredential


def _connection(
    *providers: str, app_default: ProviderCredential | None = None
) -> ConnectionCredentials:
    return ConnectionCredentials(
        connection_id="conn",
        app_id="app",
        fallback_to_default=False,
        providers={
            name: ProviderCredential(name, SecretStr("sk-test"), None) for name in providers
        },
        app_default=app_default,
    )


def test_provider_prefix_and_the_rest_as_upstream_model() -> None:
    connection = _connection("openai", "openrouter")
    assert choose_provider("openai/gpt-4o", connection) == ("openai", "gpt-4o")
    assert choose_provider("openrouter/meta-llama/llama-3.1-8b", connection) == (
        "openrouter",
        "meta-llama/llama-3.1-8b",
    )


@pytest.mark.parametrize("model_id", [None, "", 42])
def test_missing_model_is_a_bad_request(model_id: object) -> None:
    with pytest.raises(ByoError) as caught:
        choose_provider(model_id, _connection("openai"))
    assert caught.value.status == 400
    assert caught.value.param == "model"


def test_unknown_prefix_is_not_found_and_never_quoted() -> None:
    with pytest.raises(ByoError) as caught:
        choose_provider("<script>/x", _connection("openai"))
    assert caught.value.code == "model_not_found"
    assert "<script>" not in caught.value.message
    assert "openai" in caught.value.message


def test_provider_the_connection_lacks_is_not_found() -> None:
    with pytest.raises(ByoError) as caught:
        choose_provider("anthropic/claude", _connection("openai"))
    assert caught.value.code == "model_not_found"


def test_default_uses_the_apps_preferred_model_when_none_is_named() -> None:
    default = ProviderCredential("openai", SecretStr("sk-app"), None, "gpt-4o-mini")
    connection = _connection(app_default=default)
    assert choose_provider("default", connection) == ("default", "gpt-4o-mini")
    assert choose_provider("default/gpt-4o", connection) == ("default", "gpt-4o")


def test_default_without_an_app_default_is_not_found() -> None:
    with pytest.raises(ByoError) as caught:
        choose_provider("default/gpt-4o", _connection("openai"))
    assert caught.value.code == "model_not_found"


def test_a_vendor_prefix_says_there_is_no_such_provider_and_how_openrouter_reaches_it() -> None:
    with pytest.raises(ByoError) as caught:
        choose_provider("google/gemini-2.5-flash-lite", _connection("openai", "openrouter"))
    message = caught.value.message
    assert caught.value.code == "model_not_found"
    assert "no provider google" in message
    assert "openrouter/google/gemini-2.5-flash-lite" in message
    assert "OpenRouter key" in message


def test_a_vendor_prefix_without_openrouter_says_to_connect_it() -> None:
    with pytest.raises(ByoError) as caught:
        choose_provider("google/gemini-2.5-flash-lite", _connection("openai"))
    assert "openrouter/google/gemini-2.5-flash-lite" in caught.value.message
    assert "has no openrouter provider" in caught.value.message


def test_an_odd_prefix_is_never_quoted_back() -> None:
    with pytest.raises(ByoError) as caught:
        choose_provider("goo gle\n/x", _connection("openrouter"))
    assert "goo" not in caught.value.message
