"""The NATS micro protocol responder, so `nats micro ls` lists every running service."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg


class Discovery:
    """Answers the NATS micro protocol ($SRV.PING/INFO/STATS) so `nats micro ls` lists us."""

    def __init__(self, name: str, version: str, description: str) -> None:
        self.name = name
        self.version = version
        self.description = description
        self.id = os.urandom(11).hex()
        self.started = datetime.now(UTC).isoformat()
        self._endpoints: dict[str, dict[str, Any]] = {}

    def add(self, name: str, subject: str, queue_group: str, description: str = "") -> None:
        self._endpoints[name] = {
            "name": name,
            "subject": subject,
            "queue_group": queue_group,
            "metadata": {"description": description} if description else None,
            "num_requests": 0,
            "num_errors": 0,
            "processing_time": 0,
            "average_processing_time": 0,
            "last_error": "",
        }

    def record(self, name: str, elapsed_ns: int, error: str | None = None) -> None:
        stats = self._endpoints.get(name)
        if stats is None:
            return
        stats["num_requests"] += 1
        stats["processing_time"] += elapsed_ns
        stats["average_processing_time"] = stats["processing_time"] // stats["num_requests"]
        if error is not None:
            stats["num_errors"] += 1
            stats["last_error"] = error

    def _identity(self, kind: str) -> dict[str, Any]:
        return {
            "type": f"io.nats.micro.v1.{kind}_response",
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "metadata": {},
        }

    def _reply(self, verb: str) -> bytes:
        body = self._identity(verb.lower())
        if verb == "INFO":
            body["description"] = self.description
            body["endpoints"] = [
                {k: e[k] for k in ("name", "subject", "queue_group", "metadata")}
                for e in self._endpoints.values()
            ]
        elif verb == "STATS":
            body["started"] = self.started
            body["endpoints"] = [
                {k: v for k, v in e.items() if k != "metadata"} for e in self._endpoints.values()
            ]
        return orjson.dumps(body)

    async def start(self, nc: NatsClient) -> None:
        for verb in ("PING", "INFO", "STATS"):

            async def answer(msg: Msg, verb: str = verb) -> None:
                if msg.reply:
                    await nc.publish(msg.reply, self._reply(verb))

            for subject in (
                f"$SRV.{verb}",
                f"$SRV.{verb}.{self.name}",
                f"$SRV.{verb}.{self.name}.{self.id}",
            ):
                await nc.subscribe(subject, cb=answer)
