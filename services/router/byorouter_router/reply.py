"""The answer to the caller: one attempt's reply written to its inbox as the bus's stream.

The caller's inbox gets the streaming protocol of `byorouter_common.bus`: start, then chunk*
and done (streamed) or result, or error (written by `chat.py`, which knows why it failed).
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import orjson

from byorouter_common.bus import CHUNK, DONE, RESULT, START, StreamWriter
from byorouter_common.contracts.router import StreamDone, StreamStart
from byorouter_router.usage import delivered_deltas, streamed_usage, without_usage


@lru_cache(maxsize=1024)
def _start_message(provider: str, model: str, attempts: int) -> bytes:
    # Most requests share a few (provider, model) pairs: encoded once each, not per request.
    return StreamStart(provider=provider, model=model, attempts=attempts).model_dump_json().encode()


class BusReply:
    """One attempt's answer, written to the caller's inbox as Byo-Kind messages.

    `start` tells the caller who answers and after how many upstream calls; from then on the
    answer is the client's and the attempt can no longer be retried or fallen back from.
    """

    __slots__ = (
        "_start",
        "_strip_usage",
        "_writer",
        "delivered",
        "first_output",
        "result_body",
        "started",
        "usage",
    )

    def __init__(
        self,
        writer: StreamWriter,
        provider: str,
        model: str,
        attempts: int,
        *,
        strip_usage: bool = False,
    ) -> None:
        self._writer = writer
        self._start = _start_message(provider, model, attempts)
        self._strip_usage = strip_usage
        self.started = False
        self.usage: dict[str, Any] | None = None
        self.result_body: bytes | None = None
        # Deltas with text sent on (an estimate of tokens, for an answer that breaks midway).
        self.delivered = 0
        # When (perf_counter) the first chunk or the whole answer went out: time to first token.
        self.first_output = 0.0

    async def start(self) -> None:
        self.started = True
        await self._writer.send(START, self._start)

    async def chunk(self, lines: bytes) -> None:
        if not self.first_output:
            self.first_output = time.perf_counter()
        self.delivered += delivered_deltas(lines)
        # Usage seen in a chunk still counts if the stream breaks before `done`.
        reported = streamed_usage(lines)
        if reported is not None:
            self.usage = reported
        if self._strip_usage:
            lines = without_usage(lines)
            if not lines:
                return
        await self._writer.send(CHUNK, lines)

    async def done(self, finish_reason: str | None, usage: dict[str, Any] | None) -> None:
        self.usage = usage
        # Usage here is for BYORouter's side (the gateway never relays it); a client sees usage
        # only in chunks, and only when it asked.
        done = StreamDone(finish_reason=finish_reason, usage=usage)
        await self._writer.send(DONE, done.model_dump_json().encode())

    async def result(self, body: bytes) -> None:
        # Its usage is read after the answer is on its way (`reported_usage`), not before.
        self.result_body = body
        self.first_output = time.perf_counter()
        await self._writer.send(RESULT, body)

    def reported_usage(self) -> dict[str, Any] | None:
        """The usage the upstream reported: from `done`, or read from the whole answer."""
        if self.usage is None and self.result_body is not None:
            try:
                answer = orjson.loads(self.result_body)
            except orjson.JSONDecodeError:
                return None
            usage = answer.get("usage") if type(answer) is dict else None
            self.usage = usage if type(usage) is dict else None
        return self.usage
