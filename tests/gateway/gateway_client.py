"""The app's side of the gateway for tests: tenants made through keystore, bodies, what was seen.

Every tenant is a real app with a real connection, created through keystore on the bus of the
stack under test; every answer comes from the real router calling the fake OpenAI upstream, whose
model names choose its faults (see `byorouter_fakes.openai`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from nats.aio.client import Client as NatsClient

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from tests.e2e.conftest import create_app_with_connection

MODEL = "openai/gpt-4o-mini"


@dataclass(frozen=True)
class Tenant:
    """An app, one of its API keys, and one connection whose provider is the fake upstream."""

    app_id: str
    client_id: str
    app_key: str
    connection_id: str
    provider_key: str

    @property
    def key_id(self) -> str:
        # byo_sk_<key_id>_<secret>: the id is public, the secret has no underscores.
        return self.app_key.split("_")[2]

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.app_key}",
            "X-Byorouter-Connection": self.connection_id,
        }

    def with_key(self, app_key: str) -> Tenant:
        return Tenant(self.app_id, self.client_id, app_key, self.connection_id, self.provider_key)


async def new_tenant(bus: Bus, stack: Stack, name: str = "gateway test app") -> Tenant:
    made = await create_app_with_connection(bus, stack.upstream_base_url, name=name)
    return Tenant(
        app_id=made.app_id,
        client_id=made.client_id,
        app_key=made.app_api_key,
        connection_id=made.connection_id,
        provider_key=made.provider_key,
    )


async def another_key(bus: Bus, tenant: Tenant) -> Tenant:
    """The same app and connection with a second API key issued by keystore."""
    issued = await bus.request(ks.APP_KEY_CREATE, ks.AppKeyCreate(client_id=tenant.client_id))
    return tenant.with_key(issued.app_api_key.get_secret_value())


def forged_key() -> str:
    """A well-formed app key that keystore never issued."""
    key_id = secrets.token_hex(6)
    return f"byo_sk_{key_id}_" + secrets.token_urlsafe(48).replace("-", "a").replace("_", "b")[:43]


def tag() -> str:
    """A fresh tag for the body's `user` field, under which the fake upstream records a request."""
    return "t-" + secrets.token_hex(6)


def chat_body(model: str = MODEL, content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def sse_events(text: str) -> list[str]:
    """The events of a server-sent-events body, checking each is a `data:` line ending in \\n\\n."""
    assert text.endswith("\n\n"), "an SSE body ends with a blank line"
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e.removeprefix("data: ") for e in events]


def chunks_of(events: list[str]) -> list[dict[str, Any]]:
    """The JSON chunks of a stream, without the final [DONE]."""
    return [orjson.loads(e) for e in events if e != "[DONE]"]


async def upstream_disconnects(stack: Stack, tag: str) -> int:
    """How many requests tagged `tag` the fake upstream saw abandoned before their answer ended."""
    async with httpx.AsyncClient() as client:
        response = await client.get(stack.upstream_url + "/_fake/disconnects", params={"tag": tag})
        response.raise_for_status()
        count: int = response.json()["count"]
        return count


async def wait_for_upstream_disconnect(stack: Stack, tag: str, within_s: float = 1.0) -> None:
    deadline = time.monotonic() + within_s
    while await upstream_disconnects(stack, tag) < 1:
        assert time.monotonic() < deadline, (
            f"upstream still busy {within_s} s after the client left"
        )
        await asyncio.sleep(0.02)


async def authenticate_calls(nc: NatsClient) -> int:
    """How many app-key checks the (one) running keystore has handled, from its micro STATS."""
    reply = await nc.request("$SRV.STATS.keystore", b"", timeout=2.0)
    stats = orjson.loads(reply.data)
    return next(
        int(e["num_requests"]) for e in stats["endpoints"] if e["name"] == ks.APP_AUTHENTICATE.name
    )
