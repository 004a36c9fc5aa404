"""`byorouter keys ...`: rotate, prune and inspect the key-encryption keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import typer

from byorouter_cli.commands.shared import JsonFlag, run_on_bus
from byorouter_common.bus import Bus
from byorouter_common.contracts import Empty
from byorouter_common.contracts import keystore as ks

keys_cli = typer.Typer(
    help="Key-encryption keys that protect stored credentials.", no_args_is_help=True
)


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
    run_on_bus(json_mode, work, render, timeout_s=120.0)


@keys_cli.command("prune")
def keys_prune(json_mode: JsonFlag = False) -> None:
    """Remove key-encryption keys that no stored credential uses any more.

    Refused, removing nothing, while any running keystore copy has not confirmed the newest
    key-encryption key: it could still be sealing new credentials with an older one.
    """

    async def work(bus: Bus) -> ks.KeysPruned:
        return await bus.request(ks.KEYS_PRUNE, Empty())

    def render(pruned: ks.KeysPruned) -> tuple[Mapping[str, Any], str]:
        removed = ", ".join(f"v{v}" for v in pruned.removed_versions) or "none"
        return (
            pruned.model_dump(mode="json"),
            f"Active key-encryption key: v{pruned.active_version}; removed: {removed}.",
        )

    run_on_bus(json_mode, work, render, timeout_s=60.0)


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
        # The copy that answered may itself be the one behind.
        newest = max([status.active_version, *(c.active_version for c in status.copies)])
        lines.append(f"Keystore copies: {sum(c.live for c in status.copies)} live")
        for copy in status.copies:
            if not copy.live:
                state = "gone (no longer counted)"
            elif copy.active_version < newest:
                state = "BEHIND: blocks prune"
            else:
                state = "up to date"
            lines.append(
                f"  {copy.host} pid {copy.pid}: seals with v{copy.active_version}, "
                f"seen {copy.seen_seconds_ago:.0f}s ago, {state}"
            )
        return status.model_dump(mode="json"), "\n".join(lines)

    run_on_bus(json_mode, work, render)
