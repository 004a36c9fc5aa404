"""`byorouter connection ...`: create a connection holding a provider credential (admin path)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer
from pydantic import SecretStr

from byorouter_cli.commands.shared import (
    ApiKeyStdinFlag,
    BaseUrlOption,
    ClientIdOption,
    JsonFlag,
    Provider,
    read_provider_key,
    run_on_bus,
)
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks

connection_cli = typer.Typer(
    help="Connections: a user's provider credentials.", no_args_is_help=True
)


@connection_cli.command("create")
def connection_create(
    client_id: ClientIdOption,
    provider: Annotated[
        Provider, typer.Option("--provider", help="Which provider the key belongs to.")
    ],
    api_key_stdin: ApiKeyStdinFlag = False,
    base_url: BaseUrlOption = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Preferred model at this provider.")
    ] = None,
    json_mode: JsonFlag = False,
) -> None:
    """Create a connection holding one provider credential (the admin path; users use Connect)."""
    api_key = read_provider_key(json_mode, provider, api_key_stdin=api_key_stdin, base_url=base_url)
    credential = ks.ProviderCredentialInput(
        provider=provider.value,
        api_key=SecretStr(api_key) if api_key else None,
        base_url=base_url,
        preferred_model=model,
    )

    async def work(bus: Bus) -> ks.ConnectionInfo:
        app = await bus.request(ks.APP_GET, ks.AppGet(client_id=client_id))
        return await bus.request(
            ks.CONNECTION_CREATE,
            ks.ConnectionCreate(app_id=app.app_id, providers=[credential]),
        )

    def render(connection: ks.ConnectionInfo) -> tuple[Mapping[str, Any], str]:
        labels = ", ".join(
            f"{p.provider} ({p.label})" if p.label else p.provider for p in connection.providers
        )
        return (
            {"connection_id": connection.connection_id},
            f"Created connection {connection.connection_id}: {labels}",
        )

    run_on_bus(json_mode, work, render)
