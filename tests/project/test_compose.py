"""docker-compose.yml agrees with the code: there is no Docker engine in CI, so the file is read.

`compose_problems` lists every way the compose file (and the proxy's deploy/Caddyfile) disagrees
with what the services read: a service `byorouter_cli.dev.stack.SERVICES` runs that compose lacks,
an environment variable no settings class reads (a stale name), a required setting left unset,
a port that is not the settings default, a NATS login that nats-server does not know, JetStream
off, a missing healthcheck or a dependency that does not wait for one, a fixed container name
or a published port that would stop `--scale`. The committed files give no problem; deliberately
broken copies each give the problem they were broken for.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices, ValidationError
from sqlalchemy.engine import make_url

from byorouter_cli.dev.stack import HTTP_SERVICES, SERVICES
from byorouter_common import nats_permissions as perms
from byorouter_common.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CADDYFILE = ROOT / "deploy" / "Caddyfile"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
NATS_CONFIG = "./deploy/nats.conf"
PROXY = "proxy"
# Read by libraries rather than our settings classes; a service may be given them.
FOREIGN_ENV = re.compile(r"^(OTEL_|PYTHON|MALLOC_ARENA_MAX$)")
# How long each service lets open requests finish after SIGTERM (compose must wait longer).
GRACE_FIELDS = {
    "gateway": "shutdown_grace_s",
    "router": "shutdown_grace_s",
    "tunnel": "drain_grace_s",
}
_INTERPOLATION = re.compile(r"\$\{(?P<var>[A-Z0-9_]+)(?::?-(?P<default>[^}]*))?\}")


def settings_class(service: str) -> type[ServiceSettings]:
    """The settings class `python -m byorouter_<service>` builds (the one its module defines)."""
    module = importlib.import_module(f"byorouter_{service}.settings")
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value.__module__ == module.__name__
    ]
    assert len(found) == 1, f"byorouter_{service}.settings defines {found}"
    return found[0]


def env_names(cls: type[ServiceSettings]) -> dict[str, str]:
    """Every environment variable `cls` reads, upper-cased, mapped to its field."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: dict[str, str] = {}
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            choices = [choice for choice in alias.choices if isinstance(choice, str)]
        elif isinstance(alias, str):
            choices = [alias]
        else:
            choices = [prefix + field_name]
        names.update({choice.upper(): field_name for choice in choices})
    return names


def interpolate(value: object) -> str:
    """A compose value with every `${VAR:-default}` replaced by its default (unset variables)."""
    return _INTERPOLATION.sub(lambda found: found["default"] or "", str(value))


def seconds(duration: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert found is not None, duration
    return float(found[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[found[2]]


def caddy_sites(text: str) -> dict[int, tuple[str, int]]:
    """Caddyfile sites `:PORT { ... dynamic a SERVICE PORT ... }` -> {site: (service, port)}."""
    sites: dict[int, tuple[str, int]] = {}
    site: int | None = None
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if found := re.fullmatch(r":(\d+) \{", stripped):
            site = int(found[1])
        elif (found := re.fullmatch(r"dynamic a (\S+) (\d+)(?: \{)?", stripped)) and site:
            sites[site] = (found[1], int(found[2]))
    return sites


def effective_settings(service: str, env: Mapping[str, str]) -> ServiceSettings:
    """What the service would run with, given exactly this environment (as in its container)."""
    with mock.patch.dict(os.environ, env, clear=True):
        return settings_class(service)()


def healthcheck_command(definition: Mapping[str, Any]) -> str:
    test = definition.get("healthcheck", {}).get("test", [])
    return " ".join(test) if isinstance(test, list) else str(test)


def compose_problems(compose: Mapping[str, Any], caddyfile: str) -> list[str]:
    services: Mapping[str, Any] = compose.get("services", {})
    problems: list[str] = []
    nats_env = {
        name: str(value) for name, value in services.get("nats", {}).get("environment", {}).items()
    }
    problems += _nats_problems(services, nats_env)
    for name, definition in services.items():
        if "container_name" in definition:
            problems.append(f"{name}: container_name stops --scale")
    sites = caddy_sites(caddyfile)
    for name in SERVICES:
        if name not in services:
            problems.append(f"{name}: not in docker-compose.yml")
            continue
        problems += _service_problems(name, services, nats_env, sites)
    for name, definition in services.items():
        for dependency, how in _depends_on(definition).items():
            if not isinstance(how, Mapping) or "condition" not in how:
                problems.append(f"{name}: depends_on {dependency} without a condition")
            elif how["condition"] == "service_healthy" and "healthcheck" not in services.get(
                dependency, {}
            ):
                problems.append(f"{name}: waits for {dependency} to be healthy; it has no check")
    return problems


def _depends_on(definition: Mapping[str, Any]) -> Mapping[str, Any]:
    depends = definition.get("depends_on", {})
    if isinstance(depends, list):
        return dict.fromkeys(depends)
    return dict(depends)


def _nats_problems(services: Mapping[str, Any], nats_env: Mapping[str, str]) -> list[str]:
    nats = services.get("nats")
    if nats is None:
        return ["nats: not in docker-compose.yml"]
    problems = []
    command = [str(part) for part in nats.get("command", [])]
    if "-js" not in command and "--jetstream" not in command:
        problems.append("nats: JetStream is off (-js): usage reports have nowhere to wait")
    store = command[command.index("-sd") + 1] if "-sd" in command else None
    volumes = [str(volume) for volume in nats.get("volumes", [])]
    if store is None or not any(volume.endswith(":" + store) for volume in volumes):
        problems.append("nats: the JetStream store (-sd) is not on a volume")
    config = command[command.index("--config") + 1] if "--config" in command else None
    if config is None or f"{NATS_CONFIG}:{config}:ro" not in volumes:
        problems.append(f"nats: does not run {NATS_CONFIG} (the permissions from the contract)")
    wanted = {perms.password_env_var(user) for user in perms.USERS}
    for var in sorted(wanted - set(nats_env)):
        problems.append(f"nats: no {var}: that user cannot log in")
    for var in sorted(set(nats_env) - wanted):
        problems.append(f"nats: {var} is no NATS user's password")
    if "healthcheck" not in nats:
        problems.append("nats: no healthcheck")
    return problems


def _service_problems(
    name: str,
    services: Mapping[str, Any],
    nats_env: Mapping[str, str],
    sites: Mapping[int, tuple[str, int]],
) -> list[str]:
    definition = services[name]
    problems: list[str] = []
    if [str(part) for part in definition.get("command", [])] != [
        "python",
        "-m",
        f"byorouter_{name}",
    ]:
        problems.append(f"{name}: command is not python -m byorouter_{name}")
    raw_env: Mapping[str, Any] = definition.get("environment", {})
    env = {var: interpolate(value) for var, value in raw_env.items()}
    cls = settings_class(name)
    accepted = env_names(cls)
    for var in sorted(env):
        if var.upper() not in accepted and not FOREIGN_ENV.match(var):
            problems.append(f"{name}: {var} is read by no field of {cls.__name__}")
    for field_name, field in cls.model_fields.items():
        if field.is_required() and not any(
            accepted[var.upper()] == field_name for var in env if var.upper() in accepted
        ):
            problems.append(f"{name}: required setting {field_name} is not set")
    if env.get("BYOROUTER_NATS_USER") != name:
        problems.append(f"{name}: does not log in to NATS as {name}")
    password_var = perms.password_env_var(name)
    if f"${{{password_var}" not in str(raw_env.get("BYOROUTER_NATS_PASSWORD", "")):
        problems.append(f"{name}: its NATS password is not ${password_var}")
    elif nats_env.get(password_var) != str(raw_env["BYOROUTER_NATS_PASSWORD"]):
        problems.append(f"{name}: nats-server is given another default for {password_var}")
    nats_host = urlsplit(env.get("NATS_URL", "")).hostname
    if nats_host not in services:
        problems.append(f"{name}: NATS_URL does not point at a compose service")
    try:
        settings = effective_settings(name, env)
    except ValidationError as exc:
        # Messages only: the input would repeat the environment, passwords included.
        reasons = "; ".join(error["msg"] for error in exc.errors(include_input=False))
        return [*problems, f"{name}: its settings do not validate: {reasons}"]
    if name == "keystore":
        database_host = make_url(getattr(settings, "database_url")).host  # noqa: B009
        if database_host not in services:
            problems.append("keystore: DATABASE_URL does not point at a compose service")
        if not any(var in env for var in ("BYOROUTER_KEYRING_FILE", "BYOROUTER_KEYRING")):
            problems.append("keystore: no keyring (BYOROUTER_KEYRING_FILE)")
    check = healthcheck_command(definition)
    if not check:
        problems.append(f"{name}: no healthcheck")
    if "ports" in definition:
        problems.append(f"{name}: publishes a host port; copies could not share it (--scale)")
    if name in HTTP_SERVICES:
        problems += _http_problems(name, settings, check, services, sites)
    else:
        if settings.metrics_port == 0 or f":{settings.metrics_port}/metrics" not in check:
            problems.append(f"{name}: healthcheck does not ask its metrics port")
    grace_field = GRACE_FIELDS.get(name)
    if grace_field is not None:
        # An HTTP service first answers /readyz 503 for drain_delay_s, then lets requests end.
        grace = float(getattr(settings, grace_field))
        if name in HTTP_SERVICES:
            grace += settings.drain_delay_s
        stop = seconds(str(definition.get("stop_grace_period", "10s")))
        if stop <= grace:
            problems.append(f"{name}: stop_grace_period {stop:g} s <= its drain {grace:g} s")
    if "nats" not in _depends_on(definition):
        problems.append(f"{name}: does not wait for nats")
    if name == "keystore":
        depends = _depends_on(definition)
        if (depends.get("setup") or {}).get("condition") != "service_completed_successfully":
            problems.append("keystore: starts before setup (keyring, migrations) has finished")
    return problems


def _http_problems(
    name: str,
    settings: ServiceSettings,
    check: str,
    services: Mapping[str, Any],
    sites: Mapping[int, tuple[str, int]],
) -> list[str]:
    problems = []
    port = int(getattr(settings, "port"))  # noqa: B009
    default = settings_class(name).model_fields["port"].default
    if port != default:
        problems.append(f"{name}: listens on {port}, not its default {default}")
    if getattr(settings, "host") != "0.0.0.0":  # noqa: B009
        problems.append(f"{name}: listens on loopback only; the proxy cannot reach it")
    if f"127.0.0.1:{port}/readyz" not in check:
        problems.append(f"{name}: healthcheck does not ask /readyz on its port")
    site = next((site for site, (target, _) in sites.items() if target == name), None)
    if site is None:
        problems.append(f"{name}: the proxy (deploy/Caddyfile) does not send requests to it")
        return problems
    if sites[site][1] != port:
        problems.append(
            f"{name}: the proxy sends its requests to port {sites[site][1]}, not {port}"
        )
    published = [str(mapping) for mapping in services.get(PROXY, {}).get("ports", [])]
    if not any(mapping.endswith(f":{default}:{site}") for mapping in published):
        problems.append(f"{name}: the proxy does not publish it on port {default}")
    return problems


def prometheus_problems(compose: Mapping[str, Any], prometheus: Mapping[str, Any]) -> list[str]:
    """Scrape targets `<service>:<port>` that are not that compose service's metrics port."""
    services: Mapping[str, Any] = compose.get("services", {})
    problems = []
    scraped = set()
    for job in prometheus.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            for target in static.get("targets", []):
                host, _, port = str(target).rpartition(":")
                if host not in SERVICES:
                    continue
                scraped.add(host)
                env = {
                    var: interpolate(value)
                    for var, value in services.get(host, {}).get("environment", {}).items()
                }
                metrics_port = effective_settings(host, env).metrics_port
                if int(port) != metrics_port:
                    problems.append(
                        f"prometheus: scrapes {target}; {host} serves metrics on {metrics_port}"
                    )
    for name in sorted(set(SERVICES) - scraped):
        problems.append(f"prometheus: does not scrape {name}")
    return problems


# --- the committed files ----------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def test_compose_agrees_with_the_code() -> None:
    assert compose_problems(load_compose(), CADDYFILE.read_text()) == []


def load_prometheus() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PROMETHEUS.read_text())
    return loaded


def test_prometheus_scrapes_every_service_where_compose_serves_its_metrics() -> None:
    assert prometheus_problems(load_compose(), load_prometheus()) == []


def test_a_scrape_of_the_wrong_port_is_caught(compose: dict[str, Any]) -> None:
    _env(compose, "router")["BYOROUTER_METRICS_PORT"] = "9410"
    problems = prometheus_problems(compose, load_prometheus())
    assert "prometheus: scrapes router:9402; router serves metrics on 9410" in problems


def test_every_service_reads_only_names_the_checker_knows() -> None:
    """The checker itself: env_names finds the aliased and the prefixed names."""
    gateway = env_names(settings_class("gateway"))
    assert gateway["BYOROUTER_GATEWAY_PORT"] == "port"
    assert gateway["BYOROUTER_AUTH_CACHE_TTL_S"] == "auth_cache_ttl_s"
    assert gateway["NATS_URL"] == "nats_url"
    assert "BYOROUTER_PORT" not in gateway


# --- deliberately broken copies ---------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _env(compose: dict[str, Any], service: str) -> dict[str, Any]:
    env: dict[str, Any] = compose["services"][service]["environment"]
    return env


def _drop_service(compose: dict[str, Any]) -> None:
    del compose["services"]["router"]


def _stale_env_name(compose: dict[str, Any]) -> None:
    _env(compose, "gateway")["BYOROUTER_RATE_LIMIT_PER_SECOND"] = "5"


def _wrong_port(compose: dict[str, Any]) -> None:
    _env(compose, "gateway")["BYOROUTER_GATEWAY_PORT"] = "8000"


def _loopback_host(compose: dict[str, Any]) -> None:
    del _env(compose, "connect")["BYOROUTER_CONNECT_HOST"]


def _other_nats_user(compose: dict[str, Any]) -> None:
    _env(compose, "tunnel")["BYOROUTER_NATS_USER"] = "gateway"


def _unknown_password(compose: dict[str, Any]) -> None:
    _env(compose, "router")["BYOROUTER_NATS_PASSWORD"] = "${NATS_ROUTERS_PASSWORD:-x}"


def _admin_cannot_log_in(compose: dict[str, Any]) -> None:
    del _env(compose, "nats")["NATS_ADMIN_PASSWORD"]


def _jetstream_off(compose: dict[str, Any]) -> None:
    compose["services"]["nats"]["command"].remove("-js")


def _no_healthcheck(compose: dict[str, Any]) -> None:
    del compose["services"]["keystore"]["healthcheck"]


def _metrics_check_on_other_port(compose: dict[str, Any]) -> None:
    _env(compose, "router")["BYOROUTER_METRICS_PORT"] = "9999"


def _container_name(compose: dict[str, Any]) -> None:
    compose["services"]["router"]["container_name"] = "byorouter-router"


def _host_port(compose: dict[str, Any]) -> None:
    compose["services"]["gateway"]["ports"] = ["127.0.0.1:4000:4000"]


def _no_condition(compose: dict[str, Any]) -> None:
    compose["services"]["gateway"]["depends_on"] = ["nats", "router"]


def _keystore_before_setup(compose: dict[str, Any]) -> None:
    del compose["services"]["keystore"]["depends_on"]["setup"]


def _invalid_value(compose: dict[str, Any]) -> None:
    _env(compose, "keystore")["BYOROUTER_KEK_LEASE_S"] = "1"


def _short_stop_grace(compose: dict[str, Any]) -> None:
    compose["services"]["tunnel"]["stop_grace_period"] = "10s"


def _database_elsewhere(compose: dict[str, Any]) -> None:
    _env(compose, "keystore")["DATABASE_URL"] = "postgresql+psycopg://u:p@db:5432/byorouter"


BROKEN: dict[str, tuple[Mutation, str]] = {
    "a service is missing": (_drop_service, "router: not in docker-compose.yml"),
    "a stale setting name": (_stale_env_name, "BYOROUTER_RATE_LIMIT_PER_SECOND is read by no"),
    "a port that is not the default": (_wrong_port, "gateway: listens on 8000, not its default"),
    "an HTTP service on loopback": (_loopback_host, "connect: listens on loopback only"),
    "a service logs in as another": (_other_nats_user, "tunnel: does not log in to NATS as"),
    "a password nats does not know": (_unknown_password, "router: its NATS password is not"),
    "a NATS user without password": (_admin_cannot_log_in, "nats: no NATS_ADMIN_PASSWORD"),
    "JetStream off": (_jetstream_off, "nats: JetStream is off"),
    "no healthcheck": (_no_healthcheck, "keystore: no healthcheck"),
    "metrics moved, check did not": (_metrics_check_on_other_port, "router: healthcheck does"),
    "a fixed container name": (_container_name, "router: container_name stops --scale"),
    "a host port on a copy": (_host_port, "gateway: publishes a host port"),
    "a dependency without condition": (_no_condition, "gateway: depends_on nats without a"),
    "keystore before migrations": (_keystore_before_setup, "keystore: starts before setup"),
    "a value the settings refuse": (_invalid_value, "keystore: its settings do not validate"),
    "SIGKILL before the drain": (_short_stop_grace, "tunnel: stop_grace_period 10 s <= its drain"),
    "a database host not in compose": (_database_elsewhere, "keystore: DATABASE_URL does not"),
}


@pytest.fixture
def compose() -> dict[str, Any]:
    return copy.deepcopy(load_compose())


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_a_broken_copy_is_caught(compose: dict[str, Any], what: str) -> None:
    mutate, expected = BROKEN[what]
    mutate(compose)
    problems = compose_problems(compose, CADDYFILE.read_text())
    assert any(expected in problem for problem in problems), problems


def test_a_proxy_pointing_at_the_wrong_port_is_caught() -> None:
    caddyfile = CADDYFILE.read_text().replace("dynamic a connect 8080", "dynamic a connect 8000")
    problems = compose_problems(load_compose(), caddyfile)
    assert "connect: the proxy sends its requests to port 8000, not 8080" in problems
