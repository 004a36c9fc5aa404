"""The token and connect-session routes take small bodies, and refuse a large one early."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from byorouter_cli.dev.stack import Stack
from tests.gateway.gateway_client import Tenant

CHUNK = 64 * 1024
UPLOAD = 32 * 1024 * 1024


async def upload_until_answered(
    stack: Stack, path: str, headers: dict[str, str]
) -> tuple[bytes, int]:
    """POST a chunked body of UPLOAD bytes, reading concurrently: (the answer's head, bytes sent).

    The sending stops as soon as the answer starts, so the count says how much of the body the
    gateway took before it answered.
    """
    url = httpx.URL(stack.gateway_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    lines = [f"POST {path} HTTP/1.1", f"host: {url.host}", "transfer-encoding: chunked"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    sent = 0

    async def send() -> None:
        nonlocal sent
        while sent < UPLOAD:
            writer.write(b"%x\r\n%s\r\n" % (CHUNK, b"x" * CHUNK))
            await writer.drain()
            sent += CHUNK
            await asyncio.sleep(0)  # drain() need not yield: let the reader see an answer
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    sender = asyncio.create_task(send())
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    finally:
        sender.cancel()
        writer.close()
    return answer, sent


@pytest.mark.parametrize("path", ["/v1/oauth/token", "/v1/connect/sessions"])
async def test_a_chunked_body_of_many_mib_is_413_before_it_is_all_sent(
    stack: Stack, tenant: Tenant, path: str
) -> None:
    headers = {**tenant.headers, "content-type": "application/json"}

    answer, sent = await upload_until_answered(stack, path, headers)

    assert answer.startswith(b"HTTP/1.1 413 "), answer
    # The gateway refused after a small prefix; what was sent by then sits in socket buffers,
    # far short of the whole upload.
    assert sent < UPLOAD // 4
