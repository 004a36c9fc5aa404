"""Envelope encryption and the keyring file, without a bus or a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from byorouter_common.errors import ByoError
from byorouter_keystore.crypto import (
    Keyring,
    KeyringError,
    init_keyring_file,
    read_keyring_file,
    rewrap,
    seal,
    unseal,
)

SECRET = b'{"api_key": "sk-proj-unit-test-secret-0123456789"}'


def test_a_sealed_secret_opens_only_for_its_own_connection_and_provider() -> None:
    keyring = Keyring.generate()
    sealed = seal(keyring, SECRET, "conn_a", "openai")

    assert unseal(keyring, sealed, "conn_a", "openai") == SECRET
    for connection_id, provider in (("conn_b", "openai"), ("conn_a", "anthropic")):
        with pytest.raises(ByoError) as err:
            unseal(keyring, sealed, connection_id, provider)
        assert err.value.code == "credential_undecryptable"
        assert "sk-proj" not in str(err.value.envelope())


def test_rewrap_moves_the_data_key_to_the_new_kek_and_keeps_the_ciphertext() -> None:
    old = Keyring.generate()
    sealed = seal(old, SECRET, "conn_a", "openai")
    new = old.with_new_version()

    rewrapped = rewrap(new, sealed, "conn_a", "openai")
    moved = type(sealed)(new.active, rewrapped, sealed.ciphertext)

    assert unseal(new.without([old.active]), moved, "conn_a", "openai") == SECRET


def test_init_keyring_creates_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "ring" / "keyring.json"

    assert init_keyring_file(path) is True
    first = path.read_text()
    assert init_keyring_file(path) is False

    assert path.read_text() == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_keyring_file(path).active == 1


def test_a_malformed_keyring_is_refused_without_showing_its_contents(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text('{"active": 2, "keys": {"1": "c2VjcmV0LWtleS1tYXRlcmlhbA=="}}')

    with pytest.raises(KeyringError) as err:
        read_keyring_file(path)

    assert "c2VjcmV0" not in str(err.value)
