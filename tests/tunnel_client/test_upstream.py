"""Forwarding is pinned to the one configured model server: only the API paths, no redirects,
headers built from scratch, the model server's own Host, and the local key first."""

from __future__ import annotations

import pytest

from byorouter_tunnel_client.protocol import RequestHead
from byorouter_tunnel_client.upstream import ForwardError, Upstream, check_request
from tests.tunnel_client.recording_upstream import RecordingUpstream


def head(
    path: str = "/chat/completions", method: str = "POST", key: str | None = None
) -> RequestHead:
    return RequestHead(method, path, False, 1, key)


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/../admin",
        "//evil.example/chat/completions",
        "http://evil.example/chat/completions",
        "/chat/completions?x=1",
        "/chat/completions/../../admin",
        "@evil.example/models",
        "",
    ],
)
def test_paths_outside_the_allow_list_are_refused(path: str) -> None:
    with pytest.raises(ForwardError) as refused:
        check_request(head(path))
    assert (refused.value.status, refused.value.code) == (403, "path_not_allowed")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/chat/completions"), ("DELETE", "/models"), ("PUT", "/embeddings")],
)
def test_only_post_and_get_models_are_forwarded(method: str, path: str) -> None:
    with pytest.raises(ForwardError, match="not forwarded"):
        check_request(head(path, method))
    check_request(head("/models", "GET"))
    check_request(head(path, "POST"))


async def test_the_request_reaches_the_configured_upstream_with_only_our_headers(
    recording_upstream: RecordingUpstream,
) -> None:
    upstream = Upstream(recording_upstream.base_url)
    try:
        async with upstream.open(head(key="sk-from-router"), b'{"model": "m"}') as response:
            assert response.status == 200
            body = b"".join([piece async for piece in response.pieces()])
    finally:
        await upstream.aclose()
    assert body == b'{"path": "/v1/chat/completions"}'
    seen = recording_upstream.seen[-1]
    assert (seen["method"], seen["path"], seen["body"]) == (
        "POST",
        "/v1/chat/completions",
        b'{"model": "m"}',
    )
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["host"] == f"127.0.0.1:{recording_upstream.port}"
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer sk-from-router"
    assert headers["accept-encoding"] == "identity"
    assert headers["user-agent"].startswith("byorouter-tunnel/")
    assert set(headers) <= {
        "host",
        "accept",
        "accept-encoding",
        "connection",
        "user-agent",
        "content-type",
        "content-length",
        "authorization",
    }


async def test_a_key_held_locally_wins_over_the_routers(
    recording_upstream: RecordingUpstream,
) -> None:
    upstream = Upstream(recording_upstream.base_url, "sk-local")
    try:
        async with upstream.open(head(key="sk-from-router"), b"{}") as response:
            assert response.status == 200
    finally:
        await upstream.aclose()
    assert recording_upstream.seen[-1]["headers"]["Authorization"] == "Bearer sk-local"


async def test_a_redirect_is_returned_not_followed(recording_upstream: RecordingUpstream) -> None:
    upstream = Upstream(recording_upstream.base_url)
    before = len(recording_upstream.seen)
    try:
        async with upstream.open(head(), b'{"user": "redirect-me"}') as response:
            assert response.status == 307
    finally:
        await upstream.aclose()
    assert recording_upstream.paths()[before:] == ["/v1/chat/completions"]
    assert "/admin/secret" not in recording_upstream.paths()


async def test_the_model_list_is_read_with_the_local_key(
    recording_upstream: RecordingUpstream,
) -> None:
    upstream = Upstream(recording_upstream.base_url, "sk-local")
    try:
        assert await upstream.list_models() == ["local-llama"]
    finally:
        await upstream.aclose()
    assert recording_upstream.seen[-1]["headers"]["Authorization"] == "Bearer sk-local"


async def test_an_unreachable_model_server_lists_no_models_and_fails_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = Upstream("http://127.0.0.1:9/v1", "sk-local", connect_timeout_s=2)
    try:
        assert await upstream.list_models() == []
        with pytest.raises(ForwardError) as failed:
            async with upstream.open(head(), b"{}"):
                pass
    finally:
        await upstream.aclose()
    assert (failed.value.status, failed.value.code) == (502, "upstream_unreachable")
    assert "connecting anyway" in caplog.text
    assert "sk-local" not in caplog.text
