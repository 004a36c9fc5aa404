"""Seed 000's client, `ai` + `@ai-sdk/openai-compatible`, against the gateway.

The router is conftest.py's contract-speaking stand-in; tests/e2e/ runs the same client against
the whole stack. Uses tests/js/vercel_client.mjs as it is.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.gateway.conftest import RunningGateway, Tenant

JS_DIR = Path(__file__).resolve().parents[1] / "js"


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None or not (JS_DIR / "node_modules" / "ai").exists():
        if os.environ.get("CI"):
            pytest.fail("node and tests/js/node_modules are required in CI")
        pytest.skip("node or tests/js/node_modules missing: run `make install`")
    return path


async def test_generate_and_stream_text_with_usage(
    gateway: RunningGateway, tenant: Tenant, node: str
) -> None:
    env = {
        **os.environ,
        "BYO_API_URL": gateway.url,
        "BYO_APP_KEY": tenant.app_key,
        "BYO_CONNECTION": tenant.connection_id,
        "BYO_MODEL": "test/echo",
        "BYO_PROMPT": "bring your own key",
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        str(JS_DIR / "vercel_client.mjs"),
        env=env,
        cwd=JS_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])

    assert result["generate"]["text"] == "echo: bring your own key"
    assert result["generate"]["finishReason"] == "stop"
    assert result["generate"]["usage"]["outputTokens"] == 4
    assert result["stream"]["text"] == "echo: bring your own key"
    assert len(result["stream"]["parts"]) > 1
    assert result["stream"]["finishReason"] == "stop"
    assert result["stream"]["usage"]["inputTokens"] == 3
    assert result["stream"]["usage"]["outputTokens"] == 4
