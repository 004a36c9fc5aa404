"""The model list: every connected provider's models, provider-prefixed; failures left out."""

from __future__ import annotations

import secrets

import pytest

from byorouter_cli.backends import free_port
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.router import MODELS
from byorouter_common.errors import ByoError
from byorouter_fakes.openai import MODELS as FAKE_MODELS
from byorouter_fakes.openai import FakeOpenAI
from tests.router.router_client import connect, provider


async def test_models_are_listed_with_the_provider_prefix_using_the_users_key(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    key = "sk-user-" + secrets.token_hex(16)
    ref = await connect(
        bus, provider("openai", upstream.base_url, key), provider("selfhosted", upstream.base_url)
    )
    listing = await bus.request(MODELS, ref)
    ids = [card.id for card in listing.data]
    assert ids == [f"openai/{m}" for m in FAKE_MODELS] + [f"selfhosted/{m}" for m in FAKE_MODELS]
    assert all(card.object == "model" for card in listing.data)
    authorizations = {
        r["headers"].get("Authorization") for r in upstream.requests() if r["path"] == "/v1/models"
    }
    assert f"Bearer {key}" in authorizations


async def test_a_failing_provider_is_left_out_of_the_list_not_fatal(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(
        bus,
        provider("openai", upstream.base_url, "sk-user-" + secrets.token_hex(16)),
        provider("selfhosted", f"http://127.0.0.1:{free_port()}/v1"),
    )
    listing = await bus.request(MODELS, ref)
    assert [card.id for card in listing.data] == [f"openai/{m}" for m in FAKE_MODELS]


async def test_models_of_a_missing_connection_are_404(bus: Bus) -> None:
    ref = ks.ConnectionRef(app_id="app_x", connection_id="conn_" + secrets.token_hex(12))
    with pytest.raises(ByoError) as caught:
        await bus.request(MODELS, ref)
    assert caught.value.status == 404


async def test_an_embedding_model_is_marked_so_a_picker_can_leave_it_out_of_chat(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(
        bus, provider("openai", upstream.base_url, "sk-user-" + secrets.token_hex(8))
    )
    listing = await bus.request(MODELS, ref)
    kinds = {card.id: card.kind for card in listing.data}
    assert kinds["openai/text-embedding-3-small"] == "embedding"
    assert kinds["openai/gpt-4o"] == "chat"
    card = next(c for c in listing.data if c.id == "openai/gpt-4o")
    # OpenAI's list has no names or lengths: the upstream id is the name, no length is invented.
    assert (card.name, card.context_length) == ("gpt-4o", None)
