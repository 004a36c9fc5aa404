"""Seed 000's client: `ai` + `@ai-sdk/openai-compatible` from npm, against the whole stack."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import AppWithConnection

JS_DIR = Path(__file__).resolve().parents[1] / "js"


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None or not (JS_DIR / "node_modules" / "ai").exists():
        if os.environ.get("CI"):
            pytest.fail(
                "node and tests/js/node_modules are required in CI (make install runs npm ci)"
            )
        pytest.skip("node or tests/js/node_modules missing: run `make install`")
    return path


async def test_generate_and_stream_text_with_usage(
    stack: Any, tenant: AppWithConnection, node: str
) -> None:
    env = {
        **os.environ,
        "BYO_API_URL": stack.gateway_url,
        "BYO_APP_KEY": tenant.app_api_key,
        "BYO_CONNECTION": tenant.connection_id,
        "BYO_MODEL": "openai/gpt-4o-mini",
        "BYO_PROMPT": "tell me about bring your own key",
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

    assert "bring your own key" in result["generate"]["text"]
    assert result["generate"]["finishReason"] == "stop"
    assert result["generate"]["usage"]["outputTokens"] > 0

    assert result["stream"]["text"] == result["generate"]["text"]
    assert len(result["stream"]["parts"]) > 1
    assert result["stream"]["finishReason"] == "stop"
    assert result["stream"]["usage"]["inputTokens"] > 0
    assert result["stream"]["usage"]["outputTokens"] > 0
