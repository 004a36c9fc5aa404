"""The helpers every keystore resource shares, without a bus or a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from byorouter_common.errors import ByoError
from byorouter_common.redact import mask_key
from byorouter_keystore.connect_flow.consent import s256
from byorouter_keystore.crypto import Destination, Keyring, KeyringStore, write_keyring_file
from byorouter_keystore.shared import is_plain_http_url, open_api_key, seal_api_key
from byorouter_keystore.tables import app_default_owner

API_KEY = "sk-proj-unit-test-secret-0123456789"
DIRECT = Destination("https://api.openai.com/v1")


def test_a_sealed_api_key_opens_only_for_the_owner_it_was_sealed_to() -> None:
    keyring = KeyringStore(Keyring.generate(), None)
    sealed = seal_api_key(keyring, API_KEY, "conn_a", "openai", DIRECT)

    assert open_api_key(keyring, sealed, "conn_a", "openai", DIRECT) == API_KEY
    # An app default is sealed to its app, so a credential row copied there does not open.
    with pytest.raises(ByoError) as err:
        open_api_key(keyring, sealed, app_default_owner("app_a"), "openai", DIRECT)
    assert err.value.code == "credential_undecryptable"


@pytest.mark.parametrize(
    "elsewhere",
    [
        Destination("https://api.openai.com.attacker.example/v1"),
        Destination(None),
        Destination("https://api.openai.com/v1", "tun_planted"),
        # The same characters split differently between the fields must not pass either.
        Destination("https://api.openai.com/v1|", None),
    ],
)
def test_a_sealed_api_key_opens_only_for_the_destination_it_was_sealed_to(
    elsewhere: Destination,
) -> None:
    keyring = KeyringStore(Keyring.generate(), None)
    sealed = seal_api_key(keyring, API_KEY, "conn_a", "openai", DIRECT)

    with pytest.raises(ByoError) as err:
        open_api_key(keyring, sealed, "conn_a", "openai", elsewhere)
    assert err.value.code == "credential_undecryptable"


def test_a_provider_without_a_key_opens_as_none() -> None:
    keyring = KeyringStore(Keyring.generate(), None)
    sealed = seal_api_key(keyring, None, "conn_a", "selfhosted", Destination(None, "tun_a"))

    assert open_api_key(keyring, sealed, "conn_a", "selfhosted", Destination(None, "tun_a")) is None


def test_a_key_sealed_after_another_copy_rotated_opens_after_one_reload(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    old = Keyring.generate()
    write_keyring_file(path, old)
    stale = KeyringStore.from_file(path)
    rotated = old.with_new_version()
    write_keyring_file(path, rotated)
    sealed = seal_api_key(KeyringStore(rotated, None), API_KEY, "conn_a", "openai", DIRECT)

    assert open_api_key(stale, sealed, "conn_a", "openai", DIRECT) == API_KEY
    assert stale.current.active == rotated.active


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        ("https://api.example.com/v1", True),
        ("http://localhost:11434", True),
        ("ftp://files.example.com", False),
        ("https://user:password@api.example.com", False),
        ("https://api.example.com:port", False),
        ("/v1/chat/completions", False),
        ("https://api.example.com/v1\n", False),
        # A query string or fragment is where a key hides (`?api_key=...`): refused outright.
        ("https://gpu.example/v1?api_key=sk-secret-0123456789", False),
        ("https://gpu.example/v1?", False),
        ("https://gpu.example/v1#token=0123456789", False),
    ],
)
def test_base_urls_must_be_absolute_http_without_credentials(url: str, plain: bool) -> None:
    assert is_plain_http_url(url) is plain


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("sk-proj-unit-test-secret-0123AbCd", "sk-...AbCd"),
        ("local-server-key-Wx9z", "...Wx9z"),
        ("0123456789abcdef", "...cdef"),
        # Under 16 characters, four of them would be a quarter of the key or more: none shown.
        ("sk-0123456789ab", "sk-..."),
        ("short-key-1234", "****"),
        ("abc12", "****"),
    ],
)
def test_a_masked_label_shows_at_most_the_last_four_and_none_of_a_short_key(
    key: str, label: str
) -> None:
    assert mask_key(key) == label


def test_the_pkce_challenge_matches_rfc_7636() -> None:
    # RFC 7636, appendix B.
    assert (
        s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )
