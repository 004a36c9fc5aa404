"""`byorouter webhooks ...`: where an app receives its events (admin path)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from byorouter_cli.commands.shared import ClientIdOption, JsonFlag, run_on_bus
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks

webhooks_cli = typer.Typer(
    help="Webhooks: URLs an app receives its events at, signed per Standard Webhooks.",
    no_args_is_help=True,
)


@webhooks_cli.command("add")
def webhooks_add(
    client_id: ClientIdOption,
    url: Annotated[str, typer.Option("--url", help="Where to post the app's events.")],
    json_mode: JsonFlag = False,
) -> None:
    """Register a webhook; prints its signing secret (whsec_...) once."""

    async def work(bus: Bus) -> ks.WebhookCreated:
        return await bus.request(ks.WEBHOOK_ADD, ks.WebhookAdd(client_id=client_id, url=url))

    def render(created: ks.WebhookCreated) -> tuple[Mapping[str, Any], str]:
        secret = created.secret.get_secret_value()
        return (
            {"webhook_id": created.webhook_id, "url": created.url, "secret": secret},
            f"Added webhook {created.webhook_id} -> {created.url}\n"
            f"Signing secret (shown once; verify with a Standard Webhooks library): {secret}",
        )

    run_on_bus(json_mode, work, render)


@webhooks_cli.command("list")
def webhooks_list(client_id: ClientIdOption, json_mode: JsonFlag = False) -> None:
    """The app's webhooks, with their pending and failed deliveries."""

    async def work(bus: Bus) -> ks.WebhookList:
        return await bus.request(ks.WEBHOOK_LIST, ks.WebhookListRequest(client_id=client_id))

    def render(listed: ks.WebhookList) -> tuple[Mapping[str, Any], str]:
        lines = [
            f"{w.webhook_id}  {w.url}  pending={w.pending} failed={w.failed}"
            for w in listed.webhooks
        ]
        return (
            {"webhooks": [w.model_dump(mode="json") for w in listed.webhooks]},
            "\n".join(lines) or "No webhooks.",
        )

    run_on_bus(json_mode, work, render)


@webhooks_cli.command("remove")
def webhooks_remove(
    webhook_id: Annotated[str, typer.Argument(help="The webhook's id (wh_...).")],
    json_mode: JsonFlag = False,
) -> None:
    """Remove a webhook; its undelivered events go with it."""

    async def work(bus: Bus) -> ks.WebhookRemoved:
        return await bus.request(ks.WEBHOOK_REMOVE, ks.WebhookRemove(webhook_id=webhook_id))

    def render(removed: ks.WebhookRemoved) -> tuple[Mapping[str, Any], str]:
        return {"webhook_id": removed.webhook_id}, f"Removed webhook {removed.webhook_id}"

    run_on_bus(json_mode, work, render)
