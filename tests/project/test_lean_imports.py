"""A service process loads only what it uses: every package imported at start stays resident.

Measured at idle (psutil RSS, the whole stack): keeping aiohttp out of the gateway, Connect and
the tunnel service saves about 9 MiB each, out of a keystore until its first webhook 8 MiB,
`pydantic.v1` out of the gateway 1.5 MiB, `cryptography` out of a router until its first
tunnel request 7 MiB, Alembic out of a serving keystore about 8 MiB,
uvicorn out of router and keystore about 3 MiB each, `cryptography` out of the tunnel service
7 MiB, the OpenTelemetry SDK out of an untraced service 1.5 MiB. Each case runs
`python -m byorouter_<service>`'s module top (not its `__main__` block) in a fresh interpreter
and lists the packages it loaded.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# Packages a service never uses but a shared module could pull in by accident.
# None loads the fake providers, nor with tracing off (the default) the OpenTelemetry SDK and
# the psutil it brings, nor uvicorn's reloader.
ANY_SERVICE = ("opentelemetry.sdk", "psutil", "watchfiles", "byorouter_fakes")
# FastAPI would load pydantic.v1 to recognise version-1 models; we have none.
FASTAPI_APP = ("pydantic.v1", *ANY_SERVICE)
# Router and keystore serve no HTTP.
NO_HTTP = ("uvicorn", "click", "fastapi", "starlette")
NEVER_LOADED = {
    "gateway": ("aiohttp", "cryptography", "sqlalchemy", "alembic", "jinja2", *FASTAPI_APP),
    "connect": ("aiohttp", "cryptography", "sqlalchemy", "alembic", *FASTAPI_APP),
    # It relays ciphertext and shows key fingerprints; only router and client encrypt.
    "tunnel": ("aiohttp", "cryptography", "sqlalchemy", "alembic", "jinja2", *FASTAPI_APP),
    # `cryptography` only at the first tunnel request (it seals to the tunnel client's key).
    "router": ("cryptography", "sqlalchemy", "alembic", "jinja2", *NO_HTTP, *ANY_SERVICE),
    # aiohttp only once there is a webhook to send (the sender loads it then).
    "keystore": ("aiohttp", "alembic", "mako", "jinja2", *NO_HTTP, *ANY_SERVICE),
}

_LIST_MODULES = (
    "import runpy, sys; runpy.run_module({module!r}, run_name='import_check'); "
    "print('\\n'.join(name for name, module in sys.modules.items() if module))"
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
        names = out.split()
        # Each package and each of its parents: "opentelemetry.sdk" and "opentelemetry".
        loaded[service] = {
            ".".join(name.split(".")[:depth])
            for name in names
            for depth in range(1, name.count(".") + 2)
        }
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
    """The other services' exclusion of aiohttp is their own: the router keeps it."""
    assert "aiohttp" in loaded_packages["router"]


def test_a_package_imported_without_can_still_be_loaded_once_needed() -> None:
    """Keystore starts without aiohttp, and its webhook sender loads it at the first delivery
    (tests/keystore/test_webhooks.py delivers through a real keystore process)."""
    check = (
        "import sys; from byorouter_common.lean_imports import imported_without\n"
        "with imported_without('aiohttp'):\n"
        "    import nats.aio.transport as transport\n"
        "assert transport.aiohttp is None and 'yarl' not in sys.modules\n"
        "import aiohttp; print(aiohttp.ClientSession.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ClientSession"]


def test_a_contract_is_built_when_first_used_not_at_import() -> None:
    """Every service imports every contract but validates a few (`defer_build`, 5 MiB in all)."""
    check = (
        "import runpy; runpy.run_module('byorouter_router', run_name='import_check')\n"
        "from byorouter_common.contracts import keystore as ks\n"
        "assert not ks.AppCreate.__pydantic_complete__, 'built at import'\n"
        "print(ks.AppCreate.model_validate({'name': 'demo'}).name)"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["demo"]
