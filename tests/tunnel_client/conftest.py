"""Tunnel client tests: the client's code in-process against the fake OpenAI upstream, a small
recording upstream for what the fake cannot do (redirects), and a fake tunnel service socket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from byorouter_fakes.openai import FakeOpenAI
from tests.tunnel_client.fake_service import FakeTunnelService
from tests.tunnel_client.recording_upstream import RecordingUpstream


@pytest.fixture(scope="session")
async def openai_upstream() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(stream_chunks=5)
    await fake.start("127.0.0.1", 0)
    yield fake
    await fake.stop()


@pytest.fixture(scope="session")
async def recording_upstream() -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def service() -> AsyncIterator[FakeTunnelService]:
    fake = FakeTunnelService()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()
