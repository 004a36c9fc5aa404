"""`byorouter dev`: start the stack and the demo app, say how to call it, run until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from byorouter_cli.dev.banner import banner, ready_facts
from byorouter_cli.dev.demo import EXAMPLE_APP_SCRIPT
from byorouter_cli.dev.errors import StackError
from byorouter_cli.dev.ports import DEFAULT_NATS_PORT, Ports, port_is_free
from byorouter_cli.dev.processes import RestartPolicy
from byorouter_cli.dev.stack import Stack
from byorouter_common.errors import ByoError


def run_dev(
    state_dir: Path,
    ports: Ports,
    *,
    json_mode: bool = False,
    example_app: bool = True,
    copies: int = 1,
    nats_cluster: int = 1,
) -> int:
    """Start the stack, create the demo app, print how to call it, and run until Ctrl-C.

    The example chat app runs too unless `example_app` is false, it is not there (an install
    without the repository's examples/), or its port is taken (it is optional: a developer's own
    app on :3000 must not stop the stack).
    """
    nats_url = os.environ.get("NATS_URL") or None
    if example_app and EXAMPLE_APP_SCRIPT.exists() and not port_is_free(ports.example_app):
        sys.stderr.write(
            f"note: port {ports.example_app} is in use, so the example app "
            "(examples/chat-app) does not start.\n"
        )
        example_app = False
    stack = Stack(
        state_dir,
        nats_url=nats_url,
        database_url=os.environ.get("DATABASE_URL") or None,
        # A person reads these lines: plain text unless they asked for JSON logs.
        env_overrides={"BYOROUTER_LOG_FORMAT": os.environ.get("BYOROUTER_LOG_FORMAT", "text")},
        ports=ports,
        nats_port=None if nats_url or not port_is_free(DEFAULT_NATS_PORT) else DEFAULT_NATS_PORT,
        # With --json stdout carries one JSON object, so the services' lines go to stderr.
        echo=sys.stderr if json_mode else sys.stdout,
        example_app=example_app and EXAMPLE_APP_SCRIPT.exists(),
        # One crashed service must not take the stack down: start it again, as compose would.
        restart=RestartPolicy(),
        copies=copies,
        nats_cluster=nats_cluster,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # Set explicitly: a shell that starts us in the background hands SIGINT down as ignored.
    signal.signal(signal.SIGINT, _interrupt)
    try:
        stack.start()
        demo = stack.create_demo()
        # The fake upstream again, as a user's own server behind NAT: `selfhosted/...` works at
        # once, through a real tunnel client.
        tunnel_model = stack.start_demo_tunnel(demo)
        if json_mode:
            sys.stdout.write(json.dumps(ready_facts(stack, demo, tunnel_model)) + "\n")
        else:
            sys.stdout.write(banner(stack, demo, tunnel_model))
        sys.stdout.flush()
        dead = stack.wait()
        _report_failure(
            json_mode,
            StackError(
                f"{dead} exited unexpectedly (code {stack.exit_code(dead)}); stopping the stack. "
                "Its last log lines:",
                stack.last_lines(dead),
            ),
        )
        return 1
    except KeyboardInterrupt:
        return 0
    except (StackError, ByoError) as exc:
        _report_failure(json_mode, exc)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)
        if not json_mode:
            sys.stderr.write("BYORouter stopped.\n")


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _report_failure(json_mode: bool, error: ByoError | StackError) -> None:
    message = error.message
    if json_mode:
        envelope = (
            error.envelope()
            if isinstance(error, ByoError)
            else ByoError(500, "stack_failed", message).envelope()
        )
        sys.stdout.write(json.dumps(envelope) + "\n")
        sys.stdout.flush()
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    if isinstance(error, StackError):
        for line in error.log_tail:
            sys.stderr.write(f"    {line}\n")
