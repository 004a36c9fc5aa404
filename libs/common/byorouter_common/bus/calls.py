"""Calling other services: `Bus.request` for one reply, `Bus.stream` for a streamed one."""

from __future__ import annotations

import time
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel

from byorouter_common.bus.failures import bus_error
from byorouter_common.bus.streams import ERROR, ReplyStream, StreamMux
from byorouter_common.contracts import HDR_KIND, Endpoint, Event
from byorouter_common.contracts.base import Rep, Req
from byorouter_common.errors import ByoError
from byorouter_common.metrics import BUS_REQUEST_SECONDS
from byorouter_common.telemetry import inject_headers


class Bus:
    """Calls other services over NATS; one per process, wrapping its nats-py connection."""

    def __init__(self, nc: NatsClient, *, timeout_s: float = 5.0, idle_timeout_s: float = 30.0):
        self.nc = nc
        self.timeout_s = timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._mux: StreamMux | None = None

    async def request(
        self,
        endpoint: Endpoint[Req, Rep],
        payload: Req,
        *,
        timeout_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Rep:
        """Call `endpoint`; its error envelope, no responders or a timeout raise `ByoError`."""
        t = timeout_s or self.timeout_s
        data = payload.model_dump_json().encode()
        began = time.perf_counter()
        try:
            msg = await self.nc.request(
                endpoint.subject, data, timeout=t, headers=inject_headers(headers or {})
            )
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            error = bus_error(exc, endpoint.service, t)
            BUS_REQUEST_SECONDS(endpoint.name, error.code).observe(time.perf_counter() - began)
            raise error from None
        if msg.headers and msg.headers.get(HDR_KIND) == ERROR:
            # The other side answered: its refusal is a round trip like any other.
            BUS_REQUEST_SECONDS(endpoint.name, "error").observe(time.perf_counter() - began)
            raise ByoError.from_json(msg.data)
        BUS_REQUEST_SECONDS(endpoint.name, "ok").observe(time.perf_counter() - began)
        return endpoint.reply.model_validate_json(msg.data)

    async def publish_event(self, event: Event[Any], payload: BaseModel) -> None:
        await self.nc.publish(event.subject, payload.model_dump_json().encode())

    async def stream(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        idle_timeout_s: float | None = None,
        what: str = "router",
    ) -> ReplyStream:
        """Publish a request whose reply is a stream of Byo-Kind messages, and return its reader.

        A request larger than one bus message goes in parts (`uploads`): the first here, the
        rest once the responder asks for them.
        """
        if self._mux is None:
            self._mux = StreamMux(self.nc)
            await self._mux.start()
        return await self._mux.open(
            subject, data, headers or {}, idle_timeout_s or self.idle_timeout_s, what
        )

    async def close(self) -> None:
        if self._mux is not None:
            await self._mux.stop()
            self._mux = None
