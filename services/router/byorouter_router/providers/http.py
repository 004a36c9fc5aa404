"""The upstream HTTP calls every provider makes: post a chat request, get a model list.

Both go through the router's one pooled session (`upstream.py`) and never follow redirects: a
redirect could lead to an address the SSRF guard never saw. What an upstream's error means is
the provider's to say, so a non-2xx answer is handed to the provider's `StatusError`. Every body
is read with a cap on its decoded bytes (aiohttp decompresses in bounded pieces as we read), so
one connection's upstream answering gigabytes or a gzip bomb cannot exhaust the shared router.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final, Protocol

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from byorouter_common import errors
from byorouter_common.errors import ByoError
from byorouter_router.providers.errors import MAX_ERROR_BODY, StalledUpstream, Timeouts, too_large

# The headers of a call that sends JSON and wants JSON back, or an event stream.
JSON_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}
SSE_HEADERS: Final = {"Content-Type": "application/json", "Accept": "text/event-stream"}
MODELS_TIMEOUT: Final = aiohttp.ClientTimeout(total=10)
# A model list longer than this is cut off (and then fails to parse as one).
MAX_MODEL_LIST: Final = 8 * 1024 * 1024
# A non-streamed answer (decoded) longer than this is refused: real completions are far smaller.
MAX_ANSWER: Final = 16 * 1024 * 1024

# The provider's error for a non-2xx answer: (status, first bytes of the body, headers).
StatusError = Callable[[int, bytes, CIMultiDictProxy[str]], ByoError]


class _Body(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Readable(Protocol):
    """What the body readers need of an answer: aiohttp's response, or the tunnel's."""

    @property
    def content(self) -> _Body: ...

    def close(self) -> None: ...


async def post_chat(
    session: aiohttp.ClientSession,
    url: URL,
    data: bytes,
    headers: Mapping[str, str],
    *,
    stream: bool,
    on_status: StatusError,
    provider: str,
) -> tuple[aiohttp.ClientResponse, bytes]:
    """POST a chat request; a non-2xx answer raises `on_status(...)`.

    A streamed answer comes back open for the caller to relay (and close); a non-streamed one is
    read whole (at most `MAX_ANSWER` bytes) and released to the pool.
    """
    response = await session.post(url, data=data, headers=headers, allow_redirects=False)
    if response.status >= 300:
        try:
            raw = await read_at_most(response, MAX_ERROR_BODY)
        finally:
            response.close()
        raise on_status(response.status, raw, response.headers)
    if stream:
        return response, b""
    try:
        return response, await read_answer(response, provider)
    finally:
        response.release()


async def get_model_list(
    session: aiohttp.ClientSession,
    url: URL,
    headers: Mapping[str, str],
    *,
    on_status: StatusError,
    client_timeout: aiohttp.ClientTimeout = MODELS_TIMEOUT,
) -> bytes:
    """GET a model list and return its body; a non-2xx answer raises `on_status(...)`."""
    async with session.get(
        url, headers=headers, timeout=client_timeout, allow_redirects=False
    ) as response:
        raw = await read_at_most(response, MAX_MODEL_LIST)
        if response.status >= 300:
            raise on_status(response.status, raw, response.headers)
    return raw


# A stream whose answer is over (its last event came) may take this long and this much more to
# end its body; then its connection goes back to the pool, else it is closed.
STREAM_END_GRACE_S: Final = 1.0
STREAM_END_MAX_BYTES: Final = 64 * 1024
# The streams waiting for their end (a task is only weakly held by the loop).
_ending: set[asyncio.Task[None]] = set()


class _Releasable(Protocol):
    def release(self) -> None: ...


def release_stream(response: aiohttp.ClientResponse | _Releasable) -> None:
    """Give a relayed stream's connection back to the pool once its body has ended.

    An upstream often sends the chunked body's end in a later packet than its last event (the
    fake paced one does, 20 ms later). Released before that, aiohttp closes the connection and
    the next stream opens a new one: on 200 paced streams an eighth of the router's CPU went to
    connecting (py-spy). So when the end has not come yet, a task waits for it (at most
    `STREAM_END_GRACE_S`, `STREAM_END_MAX_BYTES`) and then releases, or closes. The caller's
    answer is already complete: nothing waits on this.
    """
    if not isinstance(response, aiohttp.ClientResponse):
        response.release()
        return
    if response.content.at_eof():
        response.release()
        return
    task = asyncio.get_running_loop().create_task(_release_at_end(response))
    _ending.add(task)
    task.add_done_callback(_ending.discard)


async def _release_at_end(response: aiohttp.ClientResponse) -> None:
    ended = False
    try:
        async with asyncio.timeout(STREAM_END_GRACE_S):
            size = 0
            while size <= STREAM_END_MAX_BYTES:
                data = await response.content.readany()
                if not data:
                    ended = True
                    break
                size += len(data)
    except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError):  # closed under us
        pass
    finally:
        if ended:
            response.release()
        else:
            response.close()


async def read_answer(response: Readable, provider: str, limit: int = MAX_ANSWER) -> bytes:
    """The whole body; one longer than `limit` closes the response and raises a 502."""
    raw = await read_at_most(response, limit + 1)
    if len(raw) > limit:
        response.close()
        raise too_large(provider, limit)
    return raw


async def read_at_most(response: Readable, limit: int) -> bytes:
    """The body, or its first `limit` bytes when it is longer."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        data = await response.content.read(limit - size)
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b"".join(parts)[:limit]


class _Stream(Protocol):
    async def readany(self) -> bytes: ...


class StreamPace:
    """Holds one streamed answer to its limits: the first event, each gap, the whole answer.

    Counted in SSE events, not bytes: an upstream that sends only comments, or one byte a
    minute, keeps the socket's read timeout happy while the client waits for nothing.

    One timer per stream, moved on lazily: when it fires before the (since extended) limit, it
    sets itself for the new limit; only a read still waiting past the limit is cancelled. A
    limit that comes sooner than the timer (the first event swaps the first-token limit for a
    shorter gap) sets it anew at once, or the stream would overrun to the older time. An
    `asyncio.timeout` per read cost about a tenth of the router's CPU on paced streams (py-spy).
    Call `close()` when the stream is done.
    """

    __slots__ = (
        "_events_seen",
        "_expired",
        "_finish_by",
        "_loop",
        "_next_by",
        "_provider",
        "_reader",
        "_timeouts",
        "_timer",
        "_timer_at",
    )

    def __init__(self, provider: str, timeouts: Timeouts) -> None:
        self._loop = loop = asyncio.get_running_loop()
        now = loop.time()
        self._provider = provider
        self._timeouts = timeouts
        self._finish_by = now + timeouts.answer_s
        self._next_by = now + timeouts.first_token_s
        self._events_seen = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # The task waiting in `read`, while it waits.
        self._reader: asyncio.Task[object] | None = None
        self._expired = False

    @property
    def first_event_by(self) -> float:
        """The loop time by which the first event must have come (also bounds the headers)."""
        return min(self._next_by, self._finish_by)

    async def read(self, content: _Stream) -> bytes:
        """The next bytes of the stream; a 504 `upstream_timeout` when a limit runs out first."""
        due = min(self._next_by, self._finish_by)
        if self._loop.time() >= due:
            raise self.stalled()
        timer = self._timer
        if timer is None or due < self._timer_at:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(due, self._check)
            self._timer_at = due
        reader = self._reader = asyncio.current_task()
        try:
            return await content.readany()
        except asyncio.CancelledError:
            if self._expired and reader is not None:
                self._expired = False
                # Ours alone (as `asyncio.timeout` tells): a cancel from outside stays one.
                if reader.uncancel() == 0:
                    raise self.stalled() from None
            raise
        finally:
            self._reader = None

    def _check(self) -> None:
        due = min(self._next_by, self._finish_by)
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            self._timer_at = due
            return
        self._timer = None
        if self._reader is not None:
            self._expired = True
            self._reader.cancel()

    def events_arrived(self) -> None:
        self._events_seen = True
        self._next_by = self._loop.time() + self._timeouts.gap_s

    def close(self) -> None:
        """Stop the timer: the stream is over."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stalled(self) -> ByoError:
        """The error for whichever limit ran out (the whole answer's wins a tie)."""
        t = self._timeouts
        if self._loop.time() >= self._finish_by:
            what = f"finish its answer within {t.answer_s:g}s"
        elif self._events_seen:
            what = f"send anything more of its answer for {t.gap_s:g}s"
        else:
            what = f"start its answer within {t.first_token_s:g}s"
        return StalledUpstream(
            504, "upstream_timeout", f"The {self._provider} provider did not {what}."
        )


@contextlib.asynccontextmanager
async def answer_starts_by(deadline: float, pace: StreamPace | None) -> AsyncIterator[None]:
    """Until the upstream's answer starts: the request `deadline`, and for a stream also the
    first-token limit, which then names itself in the 504."""
    if pace is None:
        async with asyncio.timeout_at(deadline):
            yield
        return
    try:
        async with asyncio.timeout_at(min(deadline, pace.first_event_by)):
            yield
    except TimeoutError:
        if asyncio.get_running_loop().time() >= pace.first_event_by:
            raise pace.stalled() from None
        raise


def request_bytes(body: object) -> bytes:
    """The upstream request's JSON. The router keeps integers exactly as the app sent them, and
    one past 64 bits cannot be encoded for a provider: that is the app's 400, not our 500."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise errors.bad_request(
            "The request holds a number too large to pass on: integers must fit in 64 bits."
        ) from None
