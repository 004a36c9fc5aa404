"""Bad requests get a clear 4xx in OpenAI's error shape, and never see their own input echoed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.gateway.gateway_client import Tenant, chat_body

SECRET = "sk-proj-DoNotEchoMe0123456789"
ERROR_FIELDS = {"message", "type", "code", "param", "status"}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error.keys() >= ERROR_FIELDS
    assert error["status"] == status
    if code is not None:
        assert error["code"] == code
    assert SECRET not in response.text
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "' + SECRET.encode() + b'", "messages": [', None),
        (b"[1, 2, 3]", None),
        (b'"' + SECRET.encode() + b'"', None),
        (orjson.dumps({"messages": [{"role": "user", "content": SECRET}]}), "model"),
        (
            orjson.dumps({"model": [SECRET], "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (orjson.dumps({"model": "", "messages": [{"role": "user", "content": "x"}]}), "model"),
        (orjson.dumps({"model": "openai/gpt-4o", "messages": SECRET}), "messages"),
        (orjson.dumps({"model": "openai/gpt-4o", "messages": []}), "messages"),
        (
            orjson.dumps(
                {"model": "openai/gpt-4o", "messages": [{"role": "user"}], "stream": SECRET}
            ),
            "stream",
        ),
        (b"", None),
    ],
)
async def test_malformed_chat_body_is_400_and_not_echoed(
    http: httpx.AsyncClient, tenant: Tenant, body: bytes, param: str | None
) -> None:
    response = await http.post("/v1/chat/completions", headers=tenant.headers, content=body)
    error = assert_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert response.headers["x-should-retry"] == "false"


async def test_missing_connection_header_is_400_missing_connection(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    headers = {"Authorization": f"Bearer {tenant.app_key}"}
    assert_error(
        await http.post("/v1/chat/completions", headers=headers, json=chat_body()),
        400,
        "missing_connection",
    )
    assert_error(await http.get("/v1/models", headers=headers), 400, "missing_connection")


@pytest.mark.parametrize(
    "connection_id",
    ["conn_short", "conn_" + "a" * 65, "c" + SECRET, "conn_abc.def.ghi", "conn_abcdefgh*"],
)
async def test_malformed_connection_id_is_400(
    http: httpx.AsyncClient, tenant: Tenant, connection_id: str
) -> None:
    headers = {**tenant.headers, "X-Byorouter-Connection": connection_id}
    response = await http.post("/v1/chat/completions", headers=headers, json=chat_body())
    assert_error(response, 400, "invalid_connection_id")
    assert connection_id not in response.text


async def test_body_over_the_8_mib_default_is_413(http: httpx.AsyncClient, tenant: Tenant) -> None:
    big = chat_body(content="x" * (8 * 1024 * 1024))
    assert_error(
        await http.post("/v1/chat/completions", headers=tenant.headers, json=big),
        413,
        "request_too_large",
    )


async def test_chunked_body_over_the_limit_is_413_too(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    async def upload() -> AsyncIterator[bytes]:
        yield b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(8 * 16 + 1):
            yield b"x" * 65536
        yield b'"}]}'

    response = await http.post("/v1/chat/completions", headers=tenant.headers, content=upload())
    assert_error(response, 413, "request_too_large")


async def test_unknown_route_and_wrong_method_use_the_error_shape(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    error = assert_error(await http.get(f"/v1/{SECRET}", headers=tenant.headers), 404)
    assert error["code"] == "not_found"
    response = await http.get("/v1/chat/completions", headers=tenant.headers)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


async def test_path_parameter_errors_do_not_echo_input(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await http.get(f"/v1/connections/{SECRET}", headers=tenant.headers)
    assert_error(response, 400, "invalid_connection_id")
