"""One setting says where browsers reach Connect: the gateway's manage links and the URL the
example apps send browsers to agree under it, under its old name, and by default."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from byorouter_common.settings import CONNECT_PUBLIC_URL_DEFAULT
from byorouter_gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]


def chat_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "example_chat_app", ROOT / "examples/chat-app/app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("BYOROUTER_CONNECT_PUBLIC_URL", "BYOROUTER_CONNECT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BYOROUTER_APP_API_KEY", "byo_app_test")
    monkeypatch.setenv("BYOROUTER_CLIENT_ID", "cli_test")
    return monkeypatch


@pytest.mark.parametrize("name", ["BYOROUTER_CONNECT_PUBLIC_URL", "BYOROUTER_CONNECT_URL"])
def test_the_manage_link_host_and_the_apps_connect_url_come_from_one_setting(
    app_env: pytest.MonkeyPatch, name: str
) -> None:
    app_env.setenv(name, "https://connect.example.com")
    assert GatewaySettings().connect_public_url == "https://connect.example.com"
    assert chat_app().Config.from_env().connect_url == "https://connect.example.com"


def test_the_defaults_agree(app_env: pytest.MonkeyPatch) -> None:
    assert GatewaySettings().connect_public_url == CONNECT_PUBLIC_URL_DEFAULT
    assert chat_app().Config.from_env().connect_url == CONNECT_PUBLIC_URL_DEFAULT
    nextjs = (ROOT / "examples/nextjs-chat/lib/ai/byorouter.ts").read_text()
    assert "env.BYOROUTER_CONNECT_PUBLIC_URL ??" in nextjs
    assert f'"{CONNECT_PUBLIC_URL_DEFAULT}"' in nextjs
