"""A stack's state directory (`.byorouter/` for `byorouter dev`): its files, written owner-only.

`dev.json` tells a `byorouter ...` run beside the stack where its NATS is and how to log in;
`nats-users.json` and `nats.conf` get fresh random passwords on every start. The directory is
0700 and every file 0600 from its first byte: a file is never created looser and then tightened.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from byorouter_common import nats_permissions

DEFAULT_STATE_DIR: Final = Path(".byorouter")
DEV_FILE_NAME: Final = "dev.json"


@dataclass(frozen=True)
class StateDir:
    """Where each of one stack's files lives under its state directory."""

    root: Path

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def keyring_file(self) -> Path:
        return self.root / "keyring.json"

    @property
    def demo_file(self) -> Path:
        return self.root / "demo.json"

    @property
    def dev_file(self) -> Path:
        return self.root / DEV_FILE_NAME

    @property
    def nats_users_file(self) -> Path:
        return self.root / "nats-users.json"

    @property
    def nats_config_file(self) -> Path:
        return self.root / "nats.conf"

    @property
    def pgdata_dir(self) -> Path:
        return self.root / "pgdata"

    @property
    def jetstream_dir(self) -> Path:
        """NATS JetStream's files: usage not yet recorded survives a restart of the stack."""
        return self.root / "jetstream"


def make_private_dir(path: Path) -> None:
    """Create `path` (and its parents) and make it owner-only, also if it existed looser."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def write_private_text(path: Path, text: str) -> None:
    """Replace `path` with `text`, owner-only from the first byte.

    Written to a fresh 0600 file beside it and renamed over it: rewriting the old file in place
    would hand the new text to anyone who had opened it while it was still readable.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_private_log(path: Path) -> IO[bytes]:
    """`path` opened for appending, owner-only before anything is written to it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # a log left by an older run may be looser
    return os.fdopen(fd, "ab")


def write_private_json(path: Path, data: Mapping[str, Any]) -> None:
    write_private_text(path, json.dumps(data, indent=2) + "\n")


def write_nats_logins(state: StateDir) -> dict[str, str]:
    """Fresh passwords for every NATS user, and the server config that checks them."""
    passwords = {user: secrets.token_urlsafe(24) for user in nats_permissions.USERS}
    write_private_json(state.nats_users_file, passwords)
    write_private_text(state.nats_config_file, nats_permissions.render_config(passwords))
    return passwords
