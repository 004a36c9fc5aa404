"""`byorouter app ...`: register apps, issue and revoke their API keys, set their own provider
and their rate limits."""

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
from byorouter_common.contracts.keystore import headless as hl
from byorouter_common.contracts.keystore import provider_policy as pp
from byorouter_common.contracts.keystore.names import PROVIDER_KINDS

app_cli = typer.Typer(help="Apps: who may call the gateway.", no_args_is_help=True)
app_key_cli = typer.Typer(help="An app's API keys.", no_args_is_help=True)
app_cli.add_typer(app_key_cli, name="key")


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

    run_on_bus(json_mode, work, render)


@app_key_cli.command("create")
def app_key_create(client_id: ClientIdOption, json_mode: JsonFlag = False) -> None:
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

    run_on_bus(json_mode, work, render)


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

    run_on_bus(json_mode, work, render)


# --- the app's own default provider -------------------------------------------------------------


@app_cli.command("set-default")
def app_set_default(
    client_id: ClientIdOption,
    provider: Annotated[
        Provider, typer.Option("--provider", help="Which provider the app's key belongs to.")
    ],
    api_key_stdin: ApiKeyStdinFlag = False,
    base_url: BaseUrlOption = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model for `default` alone and for fallbacks to it."),
    ] = None,
    json_mode: JsonFlag = False,
) -> None:
    """Set the app's own provider: it serves default/<model> and is the last fallback of
    connections that allow it. Replaces the app's previous default."""
    api_key = read_provider_key(json_mode, provider, api_key_stdin=api_key_stdin, base_url=base_url)
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

    run_on_bus(json_mode, work, render)


@app_cli.command("clear-default")
def app_clear_default(client_id: ClientIdOption, json_mode: JsonFlag = False) -> None:
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

    run_on_bus(json_mode, work, render)


# --- headless connections -----------------------------------------------------------------------


@app_cli.command("headless")
def app_headless(
    client_id: ClientIdOption,
    off: Annotated[
        bool, typer.Option("--off", help="Stop allowing it (connections already made stay).")
    ] = False,
    json_mode: JsonFlag = False,
) -> None:
    """Allow the app's server to store its users' keys itself (POST /v1/connections), or stop.

    Its server then sees those keys in transit: allow it only for an app you trust with them.
    """

    async def work(bus: Bus) -> ks.AppInfo:
        return await bus.request(
            ks.APP_HEADLESS_SET, hl.AppHeadlessSet(client_id=client_id, enabled=not off)
        )

    def render(info: ks.AppInfo) -> tuple[Mapping[str, Any], str]:
        state = "on" if info.headless else "off"
        return (
            {"client_id": info.client_id, "headless": info.headless},
            f"Headless connections for {info.client_id} ({info.name}): {state}",
        )

    run_on_bus(json_mode, work, render)


# --- the app's provider policy -----------------------------------------------------------------


@app_cli.command("policy")
def app_policy(
    client_id: ClientIdOption,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            help="A provider kind its users may connect: openai, anthropic, openrouter, "
            "selfhosted (a server URL) or tunnel; repeat for several.",
        ),
    ] = None,
    allow_all: Annotated[
        bool, typer.Option("--allow-all", help="Allow every kind again (the default).")
    ] = False,
    json_mode: JsonFlag = False,
) -> None:
    """Set which kinds of provider the app's users may connect. Connections that hold a kind no
    longer allowed stop using it at once (the router falls back to their other providers)."""
    if allow_all == bool(allow):
        raise typer.BadParameter("Give --allow (one or more) or --allow-all.")
    unknown = [kind for kind in allow or () if kind not in PROVIDER_KINDS]
    if unknown:
        raise typer.BadParameter(
            f"Unknown kind {unknown[0]!r}; use: {', '.join(PROVIDER_KINDS)}.", param_hint="--allow"
        )
    request = pp.AppPolicySet(client_id=client_id, allowed_providers=None if allow_all else allow)

    async def work(bus: Bus) -> pp.AppPolicy:
        return await bus.request(pp.APP_POLICY_SET, request)

    def render(policy: pp.AppPolicy) -> tuple[Mapping[str, Any], str]:
        kinds = policy.allowed_providers
        return (
            {"client_id": policy.client_id, "allowed_providers": kinds},
            f"Users of {policy.client_id} may connect: "
            + (", ".join(kinds) if kinds is not None else "every kind of provider"),
        )

    run_on_bus(json_mode, work, render)


# --- the app's rate limits ---------------------------------------------------------------------


def _limit_text(rps: float | None, burst: int | None, default_env: str) -> str:
    if rps is None and burst is None:
        return f"the gateway's default ({default_env}_RPS / _BURST)"
    if rps == 0 or burst == 0:
        return "off"
    per_s = "default" if rps is None else f"{rps:g}"
    bursts = "default" if burst is None else str(burst)
    return f"{per_s} requests a second, bursts of {bursts}"


@app_cli.command("limits")
def app_limits(
    app: Annotated[str, typer.Argument(help="The app's id (app_...) or client id (cli_...).")],
    rps: Annotated[
        float | None, typer.Option("--rps", min=0, help="Requests a second for the whole app.")
    ] = None,
    burst: Annotated[
        int | None, typer.Option("--burst", min=0, help="Requests the app may send at once.")
    ] = None,
    connection_rps: Annotated[
        float | None,
        typer.Option("--connection-rps", min=0, help="Requests a second for each connection."),
    ] = None,
    connection_burst: Annotated[
        int | None,
        typer.Option("--connection-burst", min=0, help="Requests a connection may send at once."),
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Every limit back to the gateway's default first.")
    ] = False,
    json_mode: JsonFlag = False,
) -> None:
    """Show the app's rate limits, or set them: for the whole app and for each of its
    connections (its users), counted across every gateway; 0 turns a limit off. Gateways apply
    a change to the app's next request."""
    request = ks.AppLimitsSet(
        app=app,
        limits=ks.AppRateLimits(
            rps=rps, burst=burst, connection_rps=connection_rps, connection_burst=connection_burst
        ),
        reset=reset,
    )

    async def work(bus: Bus) -> ks.AppLimits:
        return await bus.request(ks.APP_LIMITS_SET, request)

    def render(current: ks.AppLimits) -> tuple[Mapping[str, Any], str]:
        limits = current.limits
        return (
            {"app_id": current.app_id, "client_id": current.client_id, **limits.model_dump()},
            f"Rate limits of {current.app_id} ({current.client_id}):\n"
            f"  app:             {_limit_text(limits.rps, limits.burst, 'BYOROUTER_RATE_LIMIT')}\n"
            "  each connection: "
            + _limit_text(
                limits.connection_rps, limits.connection_burst, "BYOROUTER_CONNECTION_RATE_LIMIT"
            ),
        )

    run_on_bus(json_mode, work, render)
