"""Embeddings and the Responses API through the user's tunnel: router -> NATS -> tunnel service
-> WebSocket -> the real `byorouter-tunnel` client -> the fake OpenAI upstream, via the SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_embeddings_and_responses import expected_vector
from tests.tunnel.tunnel_client import TunnelApi, TunnelClientProcess


@pytest.fixture
async def online(api: TunnelApi, client_dir: Path) -> AsyncIterator[TunnelClientProcess]:
    _, client = await api.online_client(client_dir)
    try:
        yield client
    finally:
        client.stop()


async def test_embeddings_and_responses_go_through_the_tunnel(api: TunnelApi, online: Any) -> None:
    async with api.sdk() as sdk:
        embedded = await sdk.embeddings.create(
            model="selfhosted/nomic-embed-text", input="through the tunnel", encoding_format="float"
        )
        assert embedded.data[0].embedding == expected_vector("through the tunnel")

        answer = await sdk.responses.create(model="selfhosted/gpt-4o-mini", input="tunnel reply")
        assert answer.output_text == "tunnel reply"

        stream = await sdk.responses.create(
            model="selfhosted/gpt-4o-mini", input="one two three four", stream=True
        )
        kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") > 1
