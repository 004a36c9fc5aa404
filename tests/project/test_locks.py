"""The locks pin every package with hashes, for the services and for the tunnel client alike.

`make install`, the image and the tunnel service's `/client/requirements.txt` install with
`--require-hashes`, so a package that is missing from a lock, or listed without hashes, would
make installs fail (or, worse, invite someone to drop the flag).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SERVICES_LOCK = ROOT / "requirements.lock"
CLIENT_LOCK = ROOT / "clients" / "tunnel" / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def pins(lock: Path) -> dict[str, tuple[str, int]]:
    """{package: (version, number of sha256 hashes)} from a lock in pip's hash-checking format."""
    found: dict[str, tuple[str, int]] = {}
    current = ""
    for line in lock.read_text().splitlines():
        if match := _PIN.match(line):
            current = canonicalize_name(match[1])
            found[current] = (match[2], 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            pytest.fail(f"{lock.name}: a line pip would read unpinned: {line!r}")
    return found


def direct_dependencies(pyproject: Path, *extras: str) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(text).name) for text in wanted}


@pytest.mark.parametrize("lock", [SERVICES_LOCK, CLIENT_LOCK], ids=["services", "client"])
def test_every_locked_package_has_hashes(lock: Path) -> None:
    locked = pins(lock)
    assert locked
    assert [name for name, (_, hashes) in locked.items() if hashes == 0] == []


def test_every_direct_dependency_of_the_services_is_locked() -> None:
    wanted = direct_dependencies(ROOT / "pyproject.toml", "dev")
    assert wanted - set(pins(SERVICES_LOCK)) == set()


def test_the_client_lock_has_what_the_client_needs_at_the_versions_we_test() -> None:
    client = pins(CLIENT_LOCK)
    services = pins(SERVICES_LOCK)
    wanted = direct_dependencies(ROOT / "clients" / "tunnel" / "pyproject.toml")
    assert wanted - set(client) == set()
    # What a user's model box installs is what the test suite ran against.
    assert {name: version for name, (version, _) in client.items()} == {
        name: services[name][0] for name in client
    }
