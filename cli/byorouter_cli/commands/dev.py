"""`byorouter dev`: the command-line face of `byorouter_cli.dev.run.run_dev`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from byorouter_cli.commands.shared import JsonFlag
from byorouter_cli.dev.state import DEFAULT_STATE_DIR


def dev(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where data, logs and demo.json live.")
    ] = DEFAULT_STATE_DIR,
    gateway_port: Annotated[int, typer.Option(help="Gateway (API) port.")] = 4000,
    connect_port: Annotated[int, typer.Option(help="Connect UI port.")] = 8080,
    tunnel_port: Annotated[int, typer.Option(help="Tunnel WebSocket port.")] = 4001,
    upstream_port: Annotated[int, typer.Option(help="Fake OpenAI upstream port.")] = 4100,
    copies: Annotated[
        int,
        typer.Option(
            min=1,
            help="Copies of every service; HTTP copies share their port (SO_REUSEPORT).",
        ),
    ] = 1,
    nats_cluster: Annotated[
        int,
        typer.Option(min=1, help="NATS nodes: 3 runs a cluster whose JetStream keeps 3 replicas."),
    ] = 1,
    json_mode: JsonFlag = False,
) -> None:
    """Run the whole stack on this machine (NATS, PostgreSQL, five services, a demo app)."""
    # Imported here: the other commands need none of the launcher's imports.
    from byorouter_cli.dev.ports import Ports
    from byorouter_cli.dev.run import run_dev

    code = run_dev(
        state_dir,
        Ports(
            gateway=gateway_port, connect=connect_port, tunnel=tunnel_port, upstream=upstream_port
        ),
        json_mode=json_mode,
        copies=copies,
        nats_cluster=nats_cluster,
    )
    raise typer.Exit(code)
