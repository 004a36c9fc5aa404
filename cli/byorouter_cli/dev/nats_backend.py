"""The NATS a stack starts for itself: one server or a cluster of nodes, with fresh logins.

Every start writes new random passwords (`nats-users.json`, owner-only) and the server config
that checks them (`nats.conf`, from `byorouter_common.nats_permissions`); every node of a
cluster reads the same config, so a service may log in on any node. A single server logs to
`logs/nats.log`, cluster nodes to `logs/nats-<n>.log`, each with its own JetStream store.
"""

from __future__ import annotations

import time
from pathlib import Path

from byorouter_cli.backends import NatsCluster, NatsServer
from byorouter_cli.dev.errors import StackError
from byorouter_cli.dev.state import StateDir, write_nats_logins


class StackNats:
    """This stack's own NATS: `nodes` == 1 is a single server (on `port` if given), more is a
    cluster on free ports whose URL lists every node."""

    def __init__(
        self, state: StateDir, log_file: Path, *, nodes: int = 1, port: int | None = None
    ) -> None:
        if nodes < 1:
            raise ValueError("NATS needs at least one node")
        self._state = state
        self._log_file = log_file
        self.nodes = nodes
        self._port = port
        self._server: NatsServer | NatsCluster | None = None
        self.passwords: dict[str, str] = {}

    @property
    def url(self) -> str:
        if self._server is None:
            raise StackError("this stack's NATS is not running")
        return self._server.url

    @property
    def replicas(self) -> int:
        """How many copies of a stream JetStream can keep here so that one node may die."""
        return 3 if self.nodes >= 3 else 1

    def start(self) -> StackNats:
        self.passwords = write_nats_logins(self._state)
        config = self._state.nats_config_file
        if self.nodes == 1:
            self._server = NatsServer(
                self._port,
                config_file=config,
                log_file=self._log_file,
                store_dir=self._state.jetstream_dir,
            ).start()
        else:
            logs = self._log_file.parent
            self._server = NatsCluster(
                self.nodes,
                config_file=config,
                log_file=lambda n: logs / f"nats-{n}.log",
                store_root=self._state.jetstream_dir,
                ports=[self._port] if self._port else None,
            ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.passwords = {}

    def restart(self, down_s: float = 0.0) -> None:
        """Every node down for `down_s`, then up again on the same ports, logins and stores."""
        server = self._require()
        server.stop()
        time.sleep(down_s)
        server.start()

    def stop_node(self, number: int) -> None:
        """Kill cluster node `number` (1-based); clients on it move to the others."""
        self._cluster().stop_node(number)

    def start_node(self, number: int) -> None:
        """Start node `number` again and wait until its JetStream has caught up."""
        self._cluster().start_node(number)

    def pids(self) -> dict[str, int]:
        """`nats` for a single server, `nats-<n>` for each running cluster node."""
        if isinstance(self._server, NatsServer):
            process = self._server.process
            return {} if process is None else {"nats": process.pid}
        if isinstance(self._server, NatsCluster):
            return {
                f"nats-{n}": node.process.pid
                for n, node in enumerate(self._server.nodes, start=1)
                if node.process is not None
            }
        return {}

    def _require(self) -> NatsServer | NatsCluster:
        if self._server is None:
            raise StackError("this stack did not start NATS")
        return self._server

    def _cluster(self) -> NatsCluster:
        server = self._require()
        if not isinstance(server, NatsCluster):
            raise StackError("this stack's NATS is a single server, not a cluster")
        return server
