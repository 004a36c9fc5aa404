"""The loopback ports a stack listens on, and how to find free ones."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Final

DEFAULT_NATS_PORT: Final = 4222


@dataclass(frozen=True)
class Ports:
    gateway: int = 4000
    connect: int = 8080
    tunnel: int = 4001
    upstream: int = 4100
    example_app: int = 3000

    @classmethod
    def free(cls) -> Ports:
        return cls(*free_ports(5))


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so none is handed out twice)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def port_is_free(port: int) -> bool:
    """True if a server could listen on `port` now (connections in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        # As uvicorn and nats-server do: otherwise a port closed moments ago looks busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
