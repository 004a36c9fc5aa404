"""Reading a server-sent event stream: the `data` of each complete event, as bytes arrive.

Every streaming upstream answers in SSE, so every provider reads it through `SseDecoder`. It is
synchronous on purpose: a provider's relay loop awaits only its upstream read and its reply, and
hands each read to `feed`, which only searches the bytes when no event is complete yet.

Only `data` is read: comments (`: keep-alive`), `event:`, `id:` and `retry:` lines carry no
answer for the upstreams we speak (Anthropic repeats the event type inside its data). The data
lines of one event are joined with "\\n", as the SSE specification says (`joined_lines` tells a
relay that hands data on as one line per event when that happened). Line ends are `\\n`,
`\\r\\n` or a lone `\\r`, as the specification allows, also when a read ends between `\\r` and
`\\n`.
"""

from __future__ import annotations

from typing import Final

# A single SSE event larger than this is not an answer chunk but a broken upstream.
MAX_EVENT_BYTES: Final = 1024 * 1024


class OversizedEvent(ValueError):
    """No event ended within `MAX_EVENT_BYTES`: the upstream is not sending an answer."""


class SseDecoder:
    """Splits one SSE byte stream into the data of its events, whatever the network's chunking."""

    __slots__ = ("_after_cr", "_max_event_bytes", "_pending", "joined_lines")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max_event_bytes = max_event_bytes
        # What came after the last complete event: the start of the next one.
        self._pending = b""
        # The last read ended with "\r": a "\n" starting the next one ends no further line.
        self._after_cr = False
        # Whether some event so far had several data lines, so its data holds a "\n".
        self.joined_lines = False

    def feed(self, data: bytes) -> list[bytes]:
        """The data of every event that `data` completes (often none); raises `OversizedEvent`."""
        if self._after_cr and data:
            self._after_cr = False
            if data.startswith(b"\n"):
                data = data[1:]
        if b"\r" in data:
            # Each read is made LF-only before it joins what is pending, which already is.
            self._after_cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._pending:
            data = self._pending + data
        end = data.rfind(b"\n\n")
        if end < 0:
            if len(data) > self._max_event_bytes:
                raise OversizedEvent
            self._pending = data
            return []
        self._pending = data[end + 2 :]
        if data.startswith(b"data: ") and data.find(b"\n") == end:
            # The usual read: exactly one event, one data line; no need to split it.
            return [data[6:end]]
        # One pass over the lines of the complete events, inline: this runs for every read.
        found: list[bytes] = []
        event: bytes | None = None
        for line in data[:end].split(b"\n"):
            if not line:
                # A blank line ends the event.
                if event is not None:
                    found.append(event)
                    event = None
            elif line.startswith(b"data:") or line == b"data":
                # A bare `data` line is a data line with an empty value.
                value = line[6:] if line[5:6] == b" " else line[5:]
                if event is None:
                    event = value
                else:
                    event += b"\n" + value
                    self.joined_lines = True
        if event is not None:
            found.append(event)
        return found

    def end(self) -> list[bytes]:
        """The data of a last event the stream ended without its blank line, if there is one."""
        if not self._pending.strip():
            self._pending = b""
            return []
        return self.feed(b"\n\n")
