"""`redact` and `safe_url` on each shape of secret that reaches a log line."""

from __future__ import annotations

import base64

from byorouter_common.redact import REDACTED, redact, safe_url

TUNNEL_TOKEN = "byo_tun_" + "Q" * 43
TUNNEL_SESSION = "byo_tses_" + "R" * 43
CONNECT_CODE = "x2Vd9kLm3Pq7Rs1Tu5Wy8Za0Bc4De6Fg2Hj5Kl9Mn3P"  # token_urlsafe(32): 43 characters


def test_python_dict_repr_hides_its_secret_fields() -> None:
    text = redact(str({"api_key": "plainsecret123", "password": "hunter2hunter2"}))
    assert "plainsecret123" not in text
    assert "hunter2hunter2" not in text
    assert "'api_key'" in text


def test_url_user_info_is_removed() -> None:
    text = redact("fetching https://alice:s3cr3tpass@example.com/v1/models")
    assert "s3cr3tpass" not in text
    assert "example.com/v1/models" in text


def test_query_string_credentials_are_removed() -> None:
    for name in ("key", "api_key", "token"):
        text = redact(f"GET https://generativelanguage.example/v1?{name}=AIzaSyQuerySecret99&x=1")
        assert "AIzaSyQuerySecret99" not in text, name
        assert "&x=1" in text


def test_basic_credentials_are_removed() -> None:
    encoded = base64.b64encode(b"alice:correct-horse").decode()
    assert encoded not in redact(f"Authorization: Basic {encoded}")
    assert encoded not in redact(f"sent header basic {encoded} upstream")


def test_basic_as_a_word_is_kept() -> None:
    assert redact("Basic configuration loaded") == "Basic configuration loaded"


def test_tunnel_tokens_and_sessions_are_removed() -> None:
    text = redact(f"tunnel login with {TUNNEL_TOKEN}, session {TUNNEL_SESSION}")
    assert TUNNEL_TOKEN[8:] not in text
    assert TUNNEL_SESSION[9:] not in text


def test_connect_codes_are_removed() -> None:
    assert CONNECT_CODE not in redact(
        f"redirect to https://app.example/cb?code={CONNECT_CODE}&state=s"
    )
    assert CONNECT_CODE not in redact(f"{{'code': '{CONNECT_CODE}'}}")
    assert CONNECT_CODE not in redact(f'{{"code": "{CONNECT_CODE}"}}')


def test_error_codes_are_not_taken_for_connect_codes() -> None:
    assert redact('{"code": "connection_not_found"}') == '{"code": "connection_not_found"}'


def test_nats_urls_with_a_login_or_a_token_are_redacted() -> None:
    assert "natspass1" not in redact("nats://byo_router:natspass1@127.0.0.1:4222")
    assert "s3cr3ttoken" not in redact("nats://s3cr3ttoken@127.0.0.1:4222")


def test_safe_url_drops_the_credentials_and_keeps_the_address() -> None:
    assert safe_url("nats://byo_router:pw@127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert safe_url("nats://tok@nats.internal:4222") == "nats://nats.internal:4222"
    assert safe_url("nats://a:b@h1:4222,nats://c:d@h2:4222") == "nats://h1:4222,nats://h2:4222"
    assert safe_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_redacted_marker_is_what_replaces_a_secret() -> None:
    assert REDACTED in redact("nats://tok@nats.internal:4222")


def test_secrets_in_capitals_are_removed_too() -> None:
    # `redact` first looks for what a secret needs in the case-folded text, then substitutes:
    # a secret in capitals must still be found by that first look.
    encoded = base64.b64encode(b"alice:correct-horse").decode()
    for line, secret in (
        ("AUTHORIZATION: BEARER abcdefgh12345678", "abcdefgh12345678"),
        ('{"API_KEY": "plainsecret123"}', "plainsecret123"),
        ("PASSWORD=hunter2hunter2", "hunter2hunter2"),
        ("GET HTTPS://HOST/V1?KEY=AIzaSyQuerySecret99", "AIzaSyQuerySecret99"),
        (f"AUTHORIZATION: BASIC {encoded}", encoded),
        ("SENT TOKEN: tok3nValue9", "tok3nValue9"),
    ):
        assert secret not in redact(line), line


def test_a_line_with_nothing_a_secret_needs_is_returned_as_it_is() -> None:
    line = "POST /v1/chat/completions 200 12.3ms req_0123456789abcdef gpt-4o-mini"
    assert redact(line) is line
