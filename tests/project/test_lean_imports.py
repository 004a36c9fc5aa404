"""A service process loads only what it uses: every package imported at start stays resident.

Measured at idle (psutil RSS, the whole stack): keeping aiohttp out of the gateway, Connect and
the tunnel service saves about 9 MiB each, and Alembic out of a serving keystore about 8 MiB.
Each case runs `python -m byorouter_<service>`'s module top (not its `__main__` block) in a
fresh interpreter and lists the top-level packages it loaded.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# Packages a service never uses but a shared module could pull in by accident.
NEVER_LOADED = {
    "gateway": ("aiohttp", "sqlalchemy", "alembic", "jinja2", "byorouter_fakes"),
    "connect": ("aiohttp", "sqlalchemy", "alembic", "byorouter_fakes"),
    "tunnel": ("aiohttp", "sqlalchemy", "alembic", "jinja2", "byorouter_fakes"),
    "router": ("sqlalchemy", "alembic", "fastapi", "jinja2", "byorouter_fakes"),
    "keystore": ("alembic", "mako", "fastapi", "jinja2", "byorouter_fakes"),
}

_LIST_MODULES = (
    "import runpy, sys; runpy.run_module({module!r}, run_name='import_check'); "
    "print('\\n'.join(sorted({{name.split('.')[0] for name, m in sys.modules.items() if m}})))"
)


@pytest.fixture(scope="module")
def loaded_packages() -> dict[str, set[str]]:
    """Top-level packages each service loads, the five interpreters started side by side."""
    running = {
        service: subprocess.Popen(
            [sys.executable, "-c", _LIST_MODULES.format(module=f"byorouter_{service}")],
            stdout=subprocess.PIPE,
            text=True,
        )
        for service in NEVER_LOADED
    }
    loaded = {}
    for service, process in running.items():
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0, f"importing byorouter_{service} failed"
        loaded[service] = set(out.split())
    return loaded


@pytest.mark.parametrize("service", sorted(NEVER_LOADED))
def test_a_service_loads_no_package_it_never_uses(
    loaded_packages: dict[str, set[str]], service: str
) -> None:
    loaded = loaded_packages[service]
    assert f"byorouter_{service}" in loaded, "the check ran something else"
    assert sorted(set(NEVER_LOADED[service]) & loaded) == []


def test_the_router_still_has_the_http_client_it_calls_providers_with(
    loaded_packages: dict[str, set[str]],
) -> None:
    """The gateway's exclusion of aiohttp is its own: the router (and keystore) keep it."""
    assert "aiohttp" in loaded_packages["router"]
    assert "aiohttp" in loaded_packages["keystore"]
