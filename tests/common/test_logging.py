"""Secrets never reach a formatted log line, whatever shape they take, in either format.

Each test goes through `setup_logging` (the one logging setup every process uses) and reads what
its handler wrote.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from byorouter_common.logging import setup_logging

TUNNEL_TOKEN = "byo_tun_" + "Q" * 43
TUNNEL_SESSION = "byo_tses_" + "R" * 43
CONNECT_CODE = "x2Vd9kLm3Pq7Rs1Tu5Wy8Za0Bc4De6Fg2Hj5Kl9Mn3P"


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def emit(fmt: str, msg: str, *args: object, **extra: object) -> str:
    """Log one line through the real setup and return exactly what its handler wrote."""
    setup_logging("test", "DEBUG", fmt)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    out = io.StringIO()
    handler.setStream(out)
    logging.getLogger("byorouter_test").info(msg, *args, extra=extra)
    return out.getvalue()


pytestmark = pytest.mark.usefixtures("restore_root_logger")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_json_body_in_a_message_is_redacted(fmt: str) -> None:
    line = emit(fmt, "upstream said %s", '{"api_key":"plainsecret123","model":"m"}')
    assert "plainsecret123" not in line
    assert "model" in line


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_python_dict_repr_is_redacted(fmt: str) -> None:
    line = emit(fmt, "request %s", {"api_key": "plainsecret123", "password": "hunter2hunter2"})
    assert "plainsecret123" not in line
    assert "hunter2hunter2" not in line


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_url_user_info_is_redacted(fmt: str) -> None:
    line = emit(fmt, "fetching %s", "https://alice:s3cr3tpass@example.com/v1/models")
    assert "s3cr3tpass" not in line
    assert "example.com/v1/models" in line


@pytest.mark.parametrize("name", ["key", "api_key", "token"])
def test_query_string_credentials_are_redacted(name: str) -> None:
    line = emit("json", "GET %s", f"https://llm.example/v1?{name}=AIzaSyQuerySecret99&alt=sse")
    assert "AIzaSyQuerySecret99" not in line


def test_basic_credentials_are_redacted() -> None:
    encoded = base64.b64encode(b"alice:correct-horse").decode()
    line = emit("json", "headers %s", f"Authorization: Basic {encoded}")
    assert encoded not in line


def test_tunnel_tokens_and_sessions_are_redacted() -> None:
    line = emit("json", "tunnel %s then %s", TUNNEL_TOKEN, TUNNEL_SESSION)
    assert TUNNEL_TOKEN[8:] not in line
    assert TUNNEL_SESSION[9:] not in line


def test_connect_code_in_a_redirect_is_redacted() -> None:
    line = emit("json", "redirect to %s", f"https://app.example/cb?code={CONNECT_CODE}&state=s")
    assert CONNECT_CODE not in line


def test_extra_field_named_as_a_secret_is_redacted() -> None:
    line = emit("json", "login", password="hunter2hunter2", user="alice")
    assert "hunter2hunter2" not in line
    assert orjson.loads(line)["user"] == "alice"


def test_nested_extra_fields_are_redacted() -> None:
    line = emit("json", "call", request={"headers": {"x-api-key": "plainsecret123"}})
    assert "plainsecret123" not in line


def test_nats_url_with_a_login_is_redacted_in_the_ready_line() -> None:
    line = emit("json", "%s ready", "router", nats="nats://byo_router:natspass1@127.0.0.1:4222")
    assert "natspass1" not in line
    assert "127.0.0.1:4222" in orjson.loads(line)["nats"]


def test_nats_url_with_a_token_is_redacted_in_the_ready_line() -> None:
    line = emit("json", "%s ready", "router", nats="nats://s3cr3ttoken@127.0.0.1:4222")
    assert "s3cr3ttoken" not in line


def test_json_line_stays_valid_json() -> None:
    line = emit("json", "upstream said %s", '{"api_key":"plainsecret123"}', code="bad_request")
    entry = orjson.loads(line)
    assert entry["code"] == "bad_request"
    assert "[REDACTED]" in entry["msg"]


def test_a_field_a_filter_adds_is_written_and_redacted() -> None:
    # Fields set on the record after it is made (a filter, a record factory) count as extras.
    setup_logging("test", "DEBUG", "json")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    out = io.StringIO()
    handler.setStream(out)

    def tag(record: logging.LogRecord) -> bool:
        record.tenant = "acme"
        record.api_key = "plainsecret123"
        return True

    handler.addFilter(tag)
    logging.getLogger("byorouter_test").info("hello", extra={"user": "alice"})
    entry = orjson.loads(out.getvalue())
    assert (entry["user"], entry["tenant"]) == ("alice", "acme")
    assert "plainsecret123" not in out.getvalue()


def test_each_line_has_its_own_time() -> None:
    setup_logging("test", "DEBUG", "json")
    handler = logging.getLogger().handlers[0]
    formatter = handler.formatter
    assert formatter is not None
    lines = []
    for created in (1_700_000_000.25, 1_700_000_000.5, 1_700_000_061.75):
        record = logging.makeLogRecord({"msg": "tick", "created": created})
        record.msecs = (created - int(created)) * 1000
        lines.append(orjson.loads(formatter.format(record))["ts"])
    assert lines == [
        "2023-11-14T22:13:20.250Z",
        "2023-11-14T22:13:20.500Z",
        "2023-11-14T22:14:21.750Z",
    ]
