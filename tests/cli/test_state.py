"""Private files of a stack's state directory are owner-only from their first byte."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from byorouter_cli.dev.state import make_private_dir, open_private_log, write_private_text


@pytest.fixture
def no_umask() -> Iterator[None]:
    """A process umask of 0, so only the mode our code asks for protects what it creates."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.usefixtures("no_umask")
def test_a_new_private_file_is_created_owner_only(tmp_path: Path) -> None:
    write_private_text(tmp_path / "secret.json", "{}")
    assert mode(tmp_path / "secret.json") == 0o600


def test_rewriting_a_world_readable_file_never_shows_the_new_text_through_it(
    tmp_path: Path,
) -> None:
    # Someone who could open the old, looser file keeps that open file; the new secret must not
    # become readable through it, not even for a moment before a chmod.
    path = tmp_path / "nats-users.json"
    path.write_text("old")
    path.chmod(0o644)
    with path.open() as reader_before:
        write_private_text(path, "new-password")
        assert "new-password" not in reader_before.read()
    assert path.read_text() == "new-password"
    assert mode(path) == 0o600


@pytest.mark.usefixtures("no_umask")
def test_a_log_file_is_created_owner_only(tmp_path: Path) -> None:
    with open_private_log(tmp_path / "router.log") as log:
        log.write(b"line\n")
    assert mode(tmp_path / "router.log") == 0o600


def test_an_old_world_readable_log_is_made_owner_only_before_anything_is_appended(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.log"
    path.write_bytes(b"old\n")
    path.chmod(0o644)
    with open_private_log(path) as log:
        assert mode(path) == 0o600
        log.write(b"new\n")
    assert path.read_bytes() == b"old\nnew\n"


@pytest.mark.usefixtures("no_umask")
def test_a_state_dir_is_owner_only_even_when_it_existed_before(tmp_path: Path) -> None:
    (tmp_path / "fresh").mkdir(mode=0o755)
    make_private_dir(tmp_path / "fresh")
    make_private_dir(tmp_path / "new" / ".byorouter")
    assert mode(tmp_path / "fresh") == 0o700
    assert mode(tmp_path / "new" / ".byorouter") == 0o700
