"""What each child of a `Stack` runs: its command line, environment, log file and readiness.

The services (and each copy of one: `gateway`, `gateway-2`, ...), the fake upstream, the demo
tunnel client and the example app are all `ChildSpec`s built here; `Stack` decides when to start
them. A child's environment is this process's minus what only some children may see: only
keystore sees the database and the keyring, and each service only its own NATS login.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from byorouter_cli.dev.demo import EXAMPLE_APP, EXAMPLE_APP_SCRIPT, TUNNEL_CLIENT
from byorouter_cli.dev.ports import Ports, free_ports
from byorouter_cli.dev.processes import (
    AnswersOn,
    ChildSpec,
    HttpReady,
    MicroReady,
    PortReady,
    Readiness,
)
from byorouter_common.contracts import tunnel

SERVICES: Final = ("keystore", "router", "gateway", "connect", "tunnel")
UPSTREAM: Final = "fake-openai"
# Services with an HTTP front door are ready when GET /readyz answers 200; the others when
# they answer NATS micro discovery ($SRV.PING.<name>).
HTTP_SERVICES: Final = frozenset({"gateway", "connect", "tunnel"})
_NOT_INHERITED: Final = frozenset(
    {"DATABASE_URL", "BYOROUTER_KEYRING_FILE", "BYOROUTER_NATS_USER", "BYOROUTER_NATS_PASSWORD"}
)


@dataclass(frozen=True)
class Backends:
    """Where the running NATS and PostgreSQL are, and how many JetStream replicas NATS keeps
    (None: a NATS the stack did not start, whose services keep their own setting)."""

    nats_url: str
    nats_passwords: Mapping[str, str]
    database_url: str | None
    jetstream_replicas: int | None = None


@dataclass
class ChildSpecs:
    """Specs for the children of one stack, from its ports, files and per-service settings.

    `backends` is set once NATS and PostgreSQL run. Every service copy gets a metrics port of
    its own, kept across restarts.
    """

    ports: Ports
    logs_dir: Path
    keyring_file: Path
    copies: int = 1
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    backends: Backends | None = None
    # Each service copy's own /metrics listener (later copies get theirs in `service`).
    metrics_ports: dict[str, int] = field(
        default_factory=lambda: dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    )

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, service)}"

    def service(self, name: str) -> ChildSpec:
        """The fake upstream or a service copy (`gateway`, `gateway-2`) as a child.

        Copy n is ready when n processes of its service answer discovery: HTTP copies share a
        port, so its /readyz could be any copy's.
        """
        ready: Readiness
        service, number = service_of(name), copy_number(name)
        if name == UPSTREAM:
            argv = [sys.executable, "-m", "byorouter_fakes.openai"]
            argv += ["--host", "127.0.0.1", "--port", str(self.ports.upstream)]
            ready = PortReady(self.ports.upstream)
        else:
            argv = [sys.executable, "-m", f"byorouter_{service}"]
            if service in HTTP_SERVICES and number == 1:
                ready = HttpReady(f"{self.url(service)}/readyz")
            else:
                ready = MicroReady(service, copies=number)
        env = self.env(service)
        if name != UPSTREAM:
            if name not in self.metrics_ports:
                self.metrics_ports[name] = self._new_metrics_port()
            env["BYOROUTER_METRICS_PORT"] = str(self.metrics_ports[name])
            env.update(self.service_env.get(name, {}))
        return ChildSpec(name, argv, env, self.log_file(name), ready)

    def env(self, name: str) -> dict[str, str]:
        """The environment of service `name` (or of the fake upstream)."""
        assert self.backends is not None, "start the backends first"
        env = inherited_env()
        env["NATS_URL"] = self.backends.nats_url
        env["PYTHONUNBUFFERED"] = "1"
        if name == UPSTREAM:
            return env
        password = self.backends.nats_passwords.get(name)
        if password is not None:
            env["BYOROUTER_NATS_USER"] = name
            env["BYOROUTER_NATS_PASSWORD"] = password
        env["BYOROUTER_METRICS_HOST"] = "127.0.0.1"
        env["BYOROUTER_METRICS_PORT"] = str(self.metrics_ports[name])
        if self.copies > 1 and name in HTTP_SERVICES:
            env["BYOROUTER_REUSE_PORT"] = "true"
        if self.backends.jetstream_replicas is not None:
            env["BYOROUTER_JETSTREAM_REPLICAS"] = str(self.backends.jetstream_replicas)
        env.update(self.env_overrides)
        if name == "keystore":
            assert self.backends.database_url is not None
            env["DATABASE_URL"] = self.backends.database_url
            env["BYOROUTER_KEYRING_FILE"] = str(self.keyring_file)
            # Webhook receivers of a local stack (and its tests) listen on loopback too.
            env["BYOROUTER_ALLOW_PRIVATE_UPSTREAMS"] = "true"
        elif name == "router":
            # The fake upstream listens on loopback, which the router refuses by default.
            env["BYOROUTER_ALLOW_PRIVATE_UPSTREAMS"] = "true"
        elif name in HTTP_SERVICES:
            prefix = f"BYOROUTER_{name.upper()}"
            env[f"{prefix}_HOST"] = "127.0.0.1"
            env[f"{prefix}_PORT"] = str(getattr(self.ports, name))
            if name == "gateway":
                # Manage links the gateway hands out must point at this stack's Connect page.
                env["BYOROUTER_CONNECT_PUBLIC_URL"] = self.url("connect")
            if name in ("gateway", "connect"):
                # The command they show a user names this stack's tunnel endpoint.
                env["BYOROUTER_TUNNEL_PUBLIC_URL"] = self.tunnel_ws_url
        env.update(self.service_env.get(name, {}))
        return env

    @property
    def tunnel_ws_url(self) -> str:
        """Where tunnel clients dial: the tunnel service's WebSocket endpoint."""
        return f"ws://127.0.0.1:{self.ports.tunnel}/tunnel"

    def demo_tunnel(
        self, token: str, tunnel_id: str, upstream_base_url: str, key_file: Path
    ) -> ChildSpec:
        """`byorouter-tunnel` in front of `upstream_base_url`, ready once its tunnel is online."""
        env = inherited_env() | {
            "PYTHONUNBUFFERED": "1",
            # The token goes in the environment, never on the command line (`ps` shows that).
            "BYOROUTER_TUNNEL_TOKEN": token,
        }
        client = Path(sys.executable).with_name("byorouter-tunnel")
        argv = (
            [str(client)] if client.exists() else [sys.executable, "-m", "byorouter_tunnel_client"]
        )
        argv += ["--url", self.tunnel_ws_url, "--upstream", upstream_base_url]
        argv += ["--key-file", str(key_file)]
        ready = AnswersOn(tunnel.status_subject(tunnel_id))
        return ChildSpec(TUNNEL_CLIENT, argv, env, self.log_file(TUNNEL_CLIENT), ready)

    def example_app(self, app_env: Mapping[str, str]) -> ChildSpec:
        """examples/chat-app with `app_env` (its demo app's login and where Connect is)."""
        env = inherited_env() | {"PYTHONUNBUFFERED": "1"} | dict(app_env)
        ready = HttpReady(f"http://127.0.0.1:{self.ports.example_app}/healthz")
        argv = [sys.executable, str(EXAMPLE_APP_SCRIPT)]
        return ChildSpec(EXAMPLE_APP, argv, env, self.log_file(EXAMPLE_APP), ready)

    def _new_metrics_port(self) -> int:
        """A free port no service or copy of this stack has been given yet."""
        taken = set(self.metrics_ports.values())
        while True:
            port = free_ports(1)[0]
            if port not in taken:
                return port


def inherited_env() -> dict[str, str]:
    """This process's environment for a child, minus what only some children may see.

    Only keystore may see the database and the keyring; nobody inherits them by accident.
    Nor does anyone inherit a NATS login meant for somebody else.
    """
    return {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}


def copy_name(service: str, number: int) -> str:
    """Copy 1 of a service is `gateway`, the others `gateway-2`, `gateway-3`, ..."""
    return service if number == 1 else f"{service}-{number}"


def service_of(name: str) -> str:
    """The service a child name is a copy of (`router-2` -> `router`); other names as given."""
    base, _, number = name.rpartition("-")
    return base if base and number.isdigit() else name


def copy_number(name: str) -> int:
    """Which copy of its service `name` is (1 for `router`, 2 for `router-2`)."""
    base, _, number = name.rpartition("-")
    return int(number) if base and number.isdigit() else 1
