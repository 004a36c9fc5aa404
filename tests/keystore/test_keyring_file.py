"""The keyring file as several keystore copies share it: durable writes, changes seen at once."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from byorouter_common.errors import ByoError
from byorouter_keystore.crypto import (
    KeyringStore,
    init_keyring_file,
    seal,
    unseal,
    write_keyring_file,
)

SECRET = b'{"api_key": "sk-proj-unit-test-secret-0123456789"}'


def test_a_keyring_write_reaches_the_disk_file_and_directory_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keyring.json"
    init_keyring_file(path)
    keyring = KeyringStore.from_file(path).current.with_new_version()
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append(("dir" if stat.S_ISDIR(mode) else "file", path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)

    write_keyring_file(path, keyring)

    # The new contents before the rename, the directory entry after it: a power cut can then
    # bring back neither a torn file nor the old one, whose keys no longer open re-wrapped rows.
    assert [kind for kind, _ in synced] == ["file", "dir"]
    assert synced[-1][1] is True
    assert KeyringStore.from_file(path).current.active == 2


async def test_a_copy_that_missed_the_rotation_event_seals_with_the_new_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keyring.json"
    init_keyring_file(path)
    rotating, lagging = KeyringStore.from_file(path), KeyringStore.from_file(path)

    await rotating.rotate()

    # No reload, no event: the lagging copy sees the changed file at its next use.
    assert seal(lagging.current, SECRET, "conn_x", "openai").kek_version == 2


async def test_a_copy_that_knows_of_a_newer_key_than_it_holds_refuses_to_seal(
    tmp_path: Path,
) -> None:
    shared, private = tmp_path / "keyring.json", tmp_path / "private" / "keyring.json"
    init_keyring_file(shared)
    private.parent.mkdir()
    private.write_text(shared.read_text())
    rotating, stale = KeyringStore.from_file(shared), KeyringStore.from_file(private)
    earlier = seal(stale.current, SECRET, "conn_x", "openai")
    rotated = await rotating.rotate()

    stale.saw_version(rotated.active)

    with pytest.raises(ByoError) as err:
        seal(stale.current, SECRET, "conn_y", "openai")
    assert err.value.status == 503
    assert err.value.code == "keyring_behind"
    assert "v2" in err.value.message
    with pytest.raises(ByoError):
        await stale.rotate()  # its own v2 would not be the v2 the others hold
    # What it already holds still opens; once its file has the new key it seals again.
    assert unseal(stale.current, earlier, "conn_x", "openai") == SECRET
    write_keyring_file(private, rotating.current)
    assert seal(stale.current, SECRET, "conn_y", "openai").kek_version == 2


def test_a_leased_copy_refuses_once_its_confirmation_runs_out(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    init_keyring_file(path)
    store = KeyringStore.from_file(path)

    earlier = seal(store.current, SECRET, "conn_x", "openai")

    store.require_confirmation()
    with pytest.raises(ByoError) as err:
        seal(store.current, SECRET, "conn_y", "openai")
    assert err.value.status == 503
    assert err.value.code == "keystore_copy_unconfirmed"
    assert unseal(store.current, earlier, "conn_x", "openai") == SECRET

    store.confirmed(until_monotonic=float("inf"))
    assert seal(store.current, SECRET, "conn_y", "openai").kek_version == 1
    store.confirmed(until_monotonic=0.0)
    with pytest.raises(ByoError):
        seal(store.current, SECRET, "conn_y", "openai")
