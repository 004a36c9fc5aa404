"""`byorouter-tunnel`: read the settings and secrets, say which key this machine uses, run.

Exit status: 0 when stopped (Ctrl-C, SIGTERM), 2 on a setting that cannot work or when the
service refuses this client for good (bad or revoked token, another key bound to the tunnel).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from byorouter_tunnel_client import __version__, e2e
from byorouter_tunnel_client.client import TunnelClient
from byorouter_tunnel_client.config import (
    DEFAULT_KEY_FILE,
    DEFAULT_MAX_CONCURRENCY,
    TOKEN_ENV,
    UPSTREAM_KEY_ENV,
    ConfigError,
    TunnelConfig,
    check_tunnel_url,
    check_upstream_url,
    token_from,
    upstream_key_from,
)
from byorouter_tunnel_client.connection import Refused

EXIT_REFUSED = 2
# Libraries that would log frames or request lines at DEBUG: kept quiet at every level, so no
# token or body can reach the log through them.
_QUIET_LOGGERS = ("websockets", "httpx", "httpcore")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byorouter-tunnel",
        description="Connect a model server on this machine to BYORouter through an outbound, "
        "end-to-end encrypted tunnel.",
        epilog=f"The tunnel token comes from ${TOKEN_ENV}, --token-file or --token-stdin; it is "
        f"never an argument. The model server's API key, if it needs one, from "
        f"${UPSTREAM_KEY_ENV} or --upstream-key-file.",
        # No prefix matching: `--token` must be an error, not a guess at `--token-file`.
        allow_abbrev=False,
    )
    parser.add_argument("--url", required=True, help="the tunnel service, wss://host/tunnel")
    parser.add_argument(
        "--upstream",
        required=True,
        help="the model server's OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--token-file", type=Path, metavar="PATH", help="read the token from PATH")
    source.add_argument("--token-stdin", action="store_true", help="read the token from stdin")
    parser.add_argument(
        "--key-file",
        type=Path,
        default=DEFAULT_KEY_FILE,
        metavar="PATH",
        help=f"this client's private key, created on first run (default {DEFAULT_KEY_FILE})",
    )
    parser.add_argument(
        "--upstream-key-file",
        type=Path,
        metavar="PATH",
        help="the model server's own API key (wins over one configured in BYORouter)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=DEFAULT_MAX_CONCURRENCY,
        metavar="N",
        help=f"requests forwarded at once; more get HTTP 429 (default {DEFAULT_MAX_CONCURRENCY})",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="default info",
    )
    parser.add_argument("--version", action="version", version=f"byorouter-tunnel {__version__}")
    return parser


def _refuse_token_argument(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    for arg in argv:
        if arg == "--token" or arg.startswith("--token="):
            parser.error(
                f"the token is never an argument (others can read it in the process list); "
                f"set ${TOKEN_ENV}, or use --token-file PATH or --token-stdin"
            )


def config_from_args(
    argv: Sequence[str], env: Mapping[str, str], stdin: TextIO
) -> tuple[TunnelConfig, str]:
    """The run's settings and the log level, or `ConfigError`/`SystemExit` explaining why not."""
    parser = build_parser()
    _refuse_token_argument(parser, argv)
    args = parser.parse_args(argv)
    if args.max_concurrency < 1:
        raise ConfigError("--max-concurrency must be at least 1")
    config = TunnelConfig(
        url=check_tunnel_url(args.url),
        upstream=check_upstream_url(args.upstream),
        token=token_from(env, args.token_file, stdin.read() if args.token_stdin else None),
        key_file=args.key_file.expanduser(),
        upstream_key=upstream_key_from(env, args.upstream_key_file),
        max_concurrency=args.max_concurrency,
    )
    return config, str(args.log_level)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


async def _serve(client: TunnelClient) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, client.stop)
    await client.run()


def _fail(message: str) -> NoReturn:
    print(f"byorouter-tunnel: {message}", file=sys.stderr)
    sys.exit(EXIT_REFUSED)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config, level = config_from_args(argv, os.environ, sys.stdin)
    except ConfigError as exc:
        _fail(str(exc))
    setup_logging(level)
    try:
        client = TunnelClient(config)
    except (OSError, ValueError) as exc:
        _fail(f"cannot use the key file {config.key_file}: {exc}")
    print(
        f"byorouter-tunnel {__version__}: key {config.key_file}\n"
        f"  public key   {client.public_key}\n"
        f"  fingerprint  {e2e.fingerprint(client.public_key)}\n"
        f"  forwarding   {config.upstream}",
        file=sys.stderr,
    )
    try:
        asyncio.run(_serve(client))
    except Refused as exc:
        _fail(f"the tunnel service refused this client ({exc.code}): {exc.message}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
