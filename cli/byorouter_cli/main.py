"""The `byorouter` command: manage apps, connections and encryption keys, and run the dev stack.

Every command talks to keystore over NATS only (never to the database), takes `--json` for
scripts, and exits 1 with a one-line message on failure.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import SecretStr

# Typer vendors its own click; its usage errors are these classes, not the `click` package's.
from typer._click import exceptions as click_exceptions

from byorouter_cli import output
from byorouter_cli.bus_client import with_bus
from byorouter_common.bus import Bus
from byorouter_common.contracts import Empty
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError

T = TypeVar("T")

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print exactly one JSON object on stdout, for scripts.")
]
# Providers whose API cannot be called without a key; a self-hosted model may need none.
_KEYED_PROVIDERS = frozenset({"openai", "anthropic", "openrouter"})


class Provider(StrEnum):
    """The `--provider` choices: exactly the providers the keystore contract accepts."""

    openai = "openai"
    anthropic = "anthropic"
    openrouter = "openrouter"
    selfhosted = "selfhosted"


assert tuple(Provider) == ks.PROVIDERS

cli = typer.Typer(
    name="byorouter",
    help="BYORouter: bring-your-own-key AI gateway. Manage apps, connections and keys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app_cli = typer.Typer(help="Apps: who may call the gateway.", no_args_is_help=True)
app_key_cli = typer.Typer(help="An app's API keys.", no_args_is_help=True)
connection_cli = typer.Typer(
    help="Connections: a user's provider credentials.", no_args_is_help=True
)
keys_cli = typer.Typer(
    help="Key-encryption keys that protect stored credentials.", no_args_is_help=True
)
cli.add_typer(app_cli, name="app")
app_cli.add_typer(app_key_cli, name="key")
cli.add_typer(connection_cli, name="connection")
cli.add_typer(keys_cli, name="keys")


def _run(
    json_mode: bool,
    work: Callable[[Bus], Awaitable[T]],
    render: Callable[[T], tuple[Mapping[str, Any], str]],
    *,
    timeout_s: float = 10.0,
) -> None:
    """Run one bus conversation and print its outcome, or the failure, the same way everywhere."""
    try:
        result = asyncio.run(with_bus(work, timeout_s=timeout_s))
    except ByoError as exc:
        output.fail(json_mode, exc)
    payload, human = render(result)
    output.emit(json_mode, payload, human)


# --- apps -------------------------------------------------------------------------------------


@app_cli.command("create")
def app_create(
    name: Annotated[str, typer.Option("--name", help="Shown to people on the consent page.")],
    redirect_uri: Annotated[
        list[str],
        typer.Option("--redirect-uri", help="Exact callback URL; repeat for several."),
    ],
    json_mode: JsonFlag = False,
) -> None:
    """Register an app; prints its client id and its first API key (shown once)."""
    request = ks.AppCreate(name=name, redirect_uris=redirect_uri)

    async def work(bus: Bus) -> ks.AppCreated:
        return await bus.request(ks.APP_CREATE, request)

    def render(created: ks.AppCreated) -> tuple[Mapping[str, Any], str]:
        key = created.app_api_key.get_secret_value()
        return (
            {
                "app_id": created.app_id,
                "client_id": created.client_id,
                "app_api_key": key,
                "key_id": created.key_id,
            },
            f"Created app {created.name!r}\n"
            f"  client id:    {created.client_id}\n"
            f"  app id:       {created.app_id}\n"
            f"  API key id:   {created.key_id}\n"
            f"  API key:      {key}\n"
            "Store the API key now: it is shown only once.",
        )

    _run(json_mode, work, render)


@app_key_cli.command("create")
def app_key_create(
    client_id: Annotated[str, typer.Option("--app", help="The app's client id.")],
    json_mode: JsonFlag = False,
) -> None:
    """Issue another API key for an app (shown once), e.g. before revoking the old one."""

    async def work(bus: Bus) -> ks.AppKeyCreated:
        return await bus.request(ks.APP_KEY_CREATE, ks.AppKeyCreate(client_id=client_id))

    def render(created: ks.AppKeyCreated) -> tuple[Mapping[str, Any], str]:
        key = created.app_api_key.get_secret_value()
        return (
            {"client_id": created.client_id, "key_id": created.key_id, "app_api_key": key},
            f"New API key {created.key_id} for {created.client_id}\n"
            f"  API key:      {key}\n"
            "Store it now: it is shown only once.",
        )

    _run(json_mode, work, render)


@app_key_cli.command("revoke")
def app_key_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (not the key itself).")],
    json_mode: JsonFlag = False,
) -> None:
    """Revoke an app API key; every gateway refuses it at once."""

    async def work(bus: Bus) -> ks.AppKeyRevoked:
        return await bus.request(ks.APP_KEY_REVOKE, ks.AppKeyRevoke(key_id=key_id))

    def render(revoked: ks.AppKeyRevoked) -> tuple[Mapping[str, Any], str]:
        return (
            {"key_id": revoked.key_id, "app_id": revoked.app_id, "revoked": True},
            f"Revoked API key {revoked.key_id}.",
        )

    _run(json_mode, work, render)


# --- the app's own default provider -------------------------------------------------------------


@app_cli.command("set-default")
def app_set_default(
    client_id: Annotated[str, typer.Option("--app", help="The app's client id.")],
    provider: Annotated[
        Provider, typer.Option("--provider", help="Which provider the app's key belongs to.")
    ],
    api_key_stdin: Annotated[
        bool, typer.Option("--api-key-stdin", help="Read the provider API key from stdin.")
    ] = False,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="Provider base URL (self-hosted, proxies).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model for `default` alone and for fallbacks to it."),
    ] = None,
    json_mode: JsonFlag = False,
) -> None:
    """Set the app's own provider: it serves default/<model> and is the last fallback of
    connections that allow it. Replaces the app's previous default."""
    api_key = _read_key_from_stdin() if api_key_stdin else None
    if provider.value in _KEYED_PROVIDERS and not api_key:
        output.fail(
            json_mode,
            output.usage_error(
                f"{provider.value} needs an API key: pass --api-key-stdin and write it to stdin."
            ),
        )
    if provider is Provider.selfhosted and not base_url:
        output.fail(json_mode, output.usage_error("selfhosted needs --base-url."))
    request = ks.AppDefaultSet(
        client_id=client_id,
        provider=provider.value,
        api_key=SecretStr(api_key) if api_key else None,
        base_url=base_url,
        model=model,
    )

    async def work(bus: Bus) -> ks.AppDefaultInfo:
        return await bus.request(ks.APP_DEFAULT_SET, request)

    def render(default: ks.AppDefaultInfo) -> tuple[Mapping[str, Any], str]:
        label = f" ({default.label})" if default.label else ""
        model_note = f", model {default.model}" if default.model else ""
        return (
            {"client_id": default.client_id, "provider": default.provider, "label": default.label},
            f"Default provider of {default.client_id}: {default.provider}{label}{model_note}",
        )

    _run(json_mode, work, render)


@app_cli.command("clear-default")
def app_clear_default(
    client_id: Annotated[str, typer.Option("--app", help="The app's client id.")],
    json_mode: JsonFlag = False,
) -> None:
    """Remove the app's default provider and erase its key; default/... then answers 404."""

    async def work(bus: Bus) -> ks.AppDefaultCleared:
        return await bus.request(ks.APP_DEFAULT_CLEAR, ks.AppDefaultClear(client_id=client_id))

    def render(cleared: ks.AppDefaultCleared) -> tuple[Mapping[str, Any], str]:
        return (
            {"client_id": cleared.client_id, "cleared": cleared.cleared},
            f"Cleared the default provider of {cleared.client_id}."
            if cleared.cleared
            else f"{cleared.client_id} had no default provider.",
        )

    _run(json_mode, work, render)


# --- connections ------------------------------------------------------------------------------


def _read_key_from_stdin() -> str:
    # A key on argv or in the environment would show up in `ps` and shell history.
    if sys.stdin.isatty():
        return getpass.getpass("Provider API key: ").strip()
    return sys.stdin.readline().strip()


@connection_cli.command("create")
def connection_create(
    client_id: Annotated[str, typer.Option("--app", help="The app's client id.")],
    provider: Annotated[
        Provider, typer.Option("--provider", help="Which provider the key belongs to.")
    ],
    api_key_stdin: Annotated[
        bool, typer.Option("--api-key-stdin", help="Read the provider API key from stdin.")
    ] = False,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="Provider base URL (self-hosted, proxies).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Preferred model at this provider.")
    ] = None,
    json_mode: JsonFlag = False,
) -> None:
    """Create a connection holding one provider credential (the admin path; users use Connect)."""
    api_key = _read_key_from_stdin() if api_key_stdin else None
    if provider.value in _KEYED_PROVIDERS and not api_key:
        output.fail(
            json_mode,
            output.usage_error(
                f"{provider.value} needs an API key: pass --api-key-stdin and write it to stdin."
            ),
        )
    if provider is Provider.selfhosted and not base_url:
        output.fail(json_mode, output.usage_error("selfhosted needs --base-url."))
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

    _run(json_mode, work, render)


# --- key-encryption keys ----------------------------------------------------------------------


@keys_cli.command("rotate")
def keys_rotate(json_mode: JsonFlag = False) -> None:
    """Add a new key-encryption key and re-wrap every stored data key with it."""

    async def work(bus: Bus) -> ks.KeysRotated:
        return await bus.request(ks.KEYS_ROTATE, Empty())

    def render(rotated: ks.KeysRotated) -> tuple[Mapping[str, Any], str]:
        return (
            rotated.model_dump(mode="json"),
            f"Key-encryption key v{rotated.active_version} is active; "
            f"re-wrapped {rotated.rewrapped} credential(s).",
        )

    # Re-wrapping touches every stored credential: allow it more than a plain call.
    _run(json_mode, work, render, timeout_s=120.0)


@keys_cli.command("prune")
def keys_prune(json_mode: JsonFlag = False) -> None:
    """Remove key-encryption keys that no stored credential uses any more."""

    async def work(bus: Bus) -> ks.KeysPruned:
        return await bus.request(ks.KEYS_PRUNE, Empty())

    def render(pruned: ks.KeysPruned) -> tuple[Mapping[str, Any], str]:
        removed = ", ".join(f"v{v}" for v in pruned.removed_versions) or "none"
        return (
            pruned.model_dump(mode="json"),
            f"Active key-encryption key: v{pruned.active_version}; removed: {removed}.",
        )

    _run(json_mode, work, render, timeout_s=60.0)


@keys_cli.command("status")
def keys_status(json_mode: JsonFlag = False) -> None:
    """Key-encryption key versions and how many credentials each one wraps."""

    async def work(bus: Bus) -> ks.KeysStatus:
        return await bus.request(ks.KEYS_STATUS, Empty())

    def render(status: ks.KeysStatus) -> tuple[Mapping[str, Any], str]:
        lines = [f"Active key-encryption key: v{status.active_version}"]
        for version in status.versions:
            count = status.credentials_by_version.get(str(version), 0)
            marker = " (active)" if version == status.active_version else ""
            lines.append(f"  v{version}{marker}: {count} credential(s)")
        return status.model_dump(mode="json"), "\n".join(lines)

    _run(json_mode, work, render)


# --- dev stack --------------------------------------------------------------------------------


@cli.command("dev")
def dev(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where data, logs and demo.json live.")
    ] = Path(".byorouter"),
    gateway_port: Annotated[int, typer.Option(help="Gateway (API) port.")] = 4000,
    connect_port: Annotated[int, typer.Option(help="Connect UI port.")] = 8080,
    tunnel_port: Annotated[int, typer.Option(help="Tunnel WebSocket port.")] = 4001,
    upstream_port: Annotated[int, typer.Option(help="Fake OpenAI upstream port.")] = 4100,
    json_mode: JsonFlag = False,
) -> None:
    """Run the whole stack on this machine (NATS, PostgreSQL, five services, a demo app)."""
    from byorouter_cli.dev.ports import Ports
    from byorouter_cli.dev.run import run_dev

    code = run_dev(
        state_dir,
        Ports(
            gateway=gateway_port, connect=connect_port, tunnel=tunnel_port, upstream=upstream_port
        ),
        json_mode=json_mode,
    )
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors become the same one-line failure (exit 1) as any other error."""
    args = sys.argv[1:] if argv is None else argv
    json_mode = "--json" in args
    command = typer.main.get_command(cli)
    try:
        code = command.main(args, prog_name="byorouter", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:
        sys.stderr.write(exc.ctx.get_help() + "\n" if exc.ctx else "")
        code = 1
    except click_exceptions.ClickException as exc:
        output.report(json_mode, output.usage_error(exc.format_message()))
        code = 1
    except typer.Abort:
        output.report(json_mode, output.usage_error("Aborted."))
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
