"""`byorouter webhooks` against the whole stack: the secret it prints verifies what arrives."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook as Verifier

from byorouter_cli.dev.stack import Stack
from tests.cli.test_cli import byorouter, create_app, create_connection

Delivery = tuple[dict[str, str], str]


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Delivery]]]:
    received: list[Delivery] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks", received
    server.shutdown()


def test_added_webhook_receives_a_verifiable_disconnect_and_can_be_removed(
    stack: Stack, receiver: tuple[str, list[Delivery]]
) -> None:
    url, received = receiver
    app = create_app(stack, "webhook CLI app")
    connection_id = create_connection(stack, app["client_id"], "sk-test-" + secrets.token_hex(12))
    added = byorouter(
        "webhooks", "add", "--app", app["client_id"], "--url", url, nats_url=stack.nats_url
    )
    assert added.code == 0, added.stderr
    secret = next(w for w in added.stdout.split() if w.startswith("whsec_"))

    # The app's own server disconnects the user (DELETE through the gateway).
    response = httpx.delete(
        f"{stack.gateway_url}/v1/connections/{connection_id}",
        headers={"Authorization": f"Bearer {app['app_api_key']}"},
    )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 10
    while not received:
        assert time.monotonic() < deadline, "no webhook delivery within 10 s"
        time.sleep(0.1)
    headers, body = received[0]
    event = Verifier(secret).verify(body, headers)
    assert event["type"] == "connection.disconnected"
    assert event["data"] == {"connection_id": connection_id}

    listed = byorouter(
        "webhooks", "list", "--app", app["client_id"], "--json", nats_url=stack.nats_url
    )
    assert listed.code == 0, listed.stderr
    [webhook] = listed.json["webhooks"]
    assert (webhook["url"], webhook["pending"], webhook["failed"]) == (url, 0, 0)
    assert secret not in listed.stdout

    removed = byorouter("webhooks", "remove", webhook["webhook_id"], nats_url=stack.nats_url)
    assert removed.code == 0, removed.stderr
    again = byorouter("webhooks", "remove", webhook["webhook_id"], nats_url=stack.nats_url)
    assert again.code == 1
    assert "Webhook not found" in again.stdout + again.stderr
