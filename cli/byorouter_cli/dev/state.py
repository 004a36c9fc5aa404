"""A stack's state directory (`.byorouter/` for `byorouter dev`): its files, written owner-only.

`dev.json` tells a `byorouter ...` run beside the stack where its NATS is and how to log in;
`nats-users.json` and `nats.conf` get fresh random passwords on every start.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

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


def write_private_text(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)  # the file may have existed with looser permissions


def write_private_json(path: Path, data: Mapping[str, Any]) -> None:
    write_private_text(path, json.dumps(data, indent=2) + "\n")


def write_nats_logins(state: StateDir) -> dict[str, str]:
    """Fresh passwords for every NATS user, and the server config that checks them."""
    passwords = {user: secrets.token_urlsafe(24) for user in nats_permissions.USERS}
    write_private_json(state.nats_users_file, passwords)
    write_private_text(state.nats_config_file, nats_permissions.render_config(passwords))
    return passwords
