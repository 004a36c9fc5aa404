"""What the CLI prints: one JSON object on stdout with `--json`, readable lines otherwise.

Failures exit with status 1 and one line on stderr; with `--json` stdout also carries the error
envelope (`{"error": {...}}`) so a script never has to parse prose.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

import typer

from byorouter_common.errors import ByoError


def emit(json_mode: bool, result: Mapping[str, Any], human: str) -> None:
    if json_mode:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    else:
        sys.stdout.write(human.rstrip("\n") + "\n")
    sys.stdout.flush()


def fail(json_mode: bool, error: ByoError) -> NoReturn:
    report(json_mode, error)
    raise typer.Exit(1)


def report(json_mode: bool, error: ByoError) -> None:
    if json_mode:
        sys.stdout.write(json.dumps(error.envelope()) + "\n")
        sys.stdout.flush()
    message = " ".join(error.message.split()) or error.code
    sys.stderr.write(f"error: {message}\n")


def usage_error(message: str) -> ByoError:
    """A mistake on the command line, in the same envelope as a failure from a service."""
    return ByoError(400, "usage_error", message, type="invalid_request_error")
