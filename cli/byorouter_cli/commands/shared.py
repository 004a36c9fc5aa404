"""What every command shares: the `--json` flag, the provider choice, and one bus call printed."""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer

from byorouter_cli import output
from byorouter_cli.bus_client import with_bus
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError

T = TypeVar("T")

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print exactly one JSON object on stdout, for scripts.")
]
ClientIdOption = Annotated[str, typer.Option("--app", help="The app's client id.")]
ApiKeyStdinFlag = Annotated[
    bool, typer.Option("--api-key-stdin", help="Read the provider API key from stdin.")
]
BaseUrlOption = Annotated[
    str | None, typer.Option("--base-url", help="Provider base URL (self-hosted, proxies).")
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


def run_on_bus(
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


def read_provider_key(
    json_mode: bool, provider: Provider, *, api_key_stdin: bool, base_url: str | None
) -> str | None:
    """The provider API key from stdin if asked for; fails if `provider` cannot work without
    it (or, self-hosted, without `base_url`)."""
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
    return api_key


def _read_key_from_stdin() -> str:
    # A key on argv or in the environment would show up in `ps` and shell history.
    if sys.stdin.isatty():
        return getpass.getpass("Provider API key: ").strip()
    return sys.stdin.readline().strip()
