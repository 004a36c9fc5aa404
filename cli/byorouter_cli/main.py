"""The `byorouter` command: manage apps, connections and encryption keys, and run the dev stack.

Every command talks to keystore over NATS only (never to the database), takes `--json` for
scripts, and exits 1 with a one-line message on failure. The commands live in
`byorouter_cli.commands`, one module per resource; this module only wires them together.
"""

from __future__ import annotations

import sys

import typer

# Typer vendors its own click; its usage errors are these classes, not the `click` package's.
from typer._click import exceptions as click_exceptions

from byorouter_cli import output
from byorouter_cli.commands.app import app_cli
from byorouter_cli.commands.connection import connection_cli
from byorouter_cli.commands.dev import dev
from byorouter_cli.commands.keys import keys_cli
from byorouter_cli.commands.webhooks import webhooks_cli

cli = typer.Typer(
    name="byorouter",
    help="BYORouter: bring-your-own-key AI gateway. Manage apps, connections and keys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli.add_typer(app_cli, name="app")
cli.add_typer(connection_cli, name="connection")
cli.add_typer(keys_cli, name="keys")
cli.add_typer(webhooks_cli, name="webhooks")
cli.command("dev")(dev)


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
