"""Steady load from the official `openai` SDK, each request's outcome classified.

Every request carries its own tag (the body's `user` field, which the fake upstream records), so
a test can check that no request reached the upstream twice. A streamed request is read raw
(`with_streaming_response`) so the driver sees exactly what an app's SSE parser would: whether
`[DONE]` came, and after what.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import httpx2
import openai
import orjson

PROMPT: Final = "one two three four five six seven eight nine ten eleven twelve"
# The kinds an app may see. Anything in VIOLATIONS is a bug in BYORouter.
COMPLETE: Final = "complete"
CLEAR_ERROR: Final = "clear error"
HUNG: Final = "hung"
TRUNCATED_DONE: Final = "[DONE] after a truncated answer"
UNCLEAR: Final = "unclear failure"
VIOLATIONS: Final = frozenset({HUNG, TRUNCATED_DONE, UNCLEAR})
# The `openai` SDK talks over httpx2 and lets its transport errors through unwrapped when a
# stream it is reading breaks (a gateway copy killed mid-answer); the tests' own calls use httpx.
TRANSPORT_ERRORS: Final = (httpx.HTTPError, httpx2.HTTPError)


@dataclass
class Outcome:
    tag: str
    streamed: bool
    kind: str
    began: float  # time.monotonic()
    took_s: float
    status: int | None = None
    code: str | None = None
    detail: str = ""


@dataclass
class Target:
    """Where an app's requests go: the gateway, its app key and one connection."""

    gateway_url: str
    app_api_key: str
    connection_id: str

    def client(self, timeout_s: float) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.gateway_url + "/v1",
            api_key=self.app_api_key,
            default_headers={"X-Byorouter-Connection": self.connection_id},
            max_retries=0,
            timeout=timeout_s,
        )


def is_openai_error(body: object) -> bool:
    """`{"error": {"message", "type", "code", "param"}}` with a non-empty message."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return False
    error = body["error"]
    return bool(error.get("message")) and {"message", "type", "code", "param"} <= error.keys()


async def streamed(client: openai.AsyncOpenAI, model: str, tag: str, prompt: str) -> Outcome:
    began = time.monotonic()
    outcome = Outcome(tag, True, UNCLEAR, began, 0.0)
    text: list[str] = []
    finish: str | None = None
    try:
        async with client.chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True, user=tag
        ) as response:
            outcome.status = response.http_response.status_code
            async for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    whole = finish is not None and "".join(text) == prompt
                    outcome.kind = COMPLETE if whole else TRUNCATED_DONE
                    outcome.detail = "" if whole else f"finish={finish} text={''.join(text)!r}"
                    break
                event = orjson.loads(data)
                if "error" in event:
                    outcome.kind = CLEAR_ERROR if is_openai_error(event) else UNCLEAR
                    outcome.code = (event.get("error") or {}).get("code")
                    outcome.detail = data[:200]
                    break
                for choice in event.get("choices") or []:
                    text.append((choice.get("delta") or {}).get("content") or "")
                    finish = choice.get("finish_reason") or finish
            else:
                outcome.detail = "the stream ended with neither [DONE] nor an error"
    except openai.APIStatusError as exc:
        _status_error(outcome, exc)
    except (openai.APIError, *TRANSPORT_ERRORS, orjson.JSONDecodeError) as exc:
        outcome.detail = f"{type(exc).__name__}: {exc}"[:200]
    outcome.took_s = time.monotonic() - began
    return outcome


async def plain(client: openai.AsyncOpenAI, model: str, tag: str, prompt: str) -> Outcome:
    began = time.monotonic()
    outcome = Outcome(tag, False, UNCLEAR, began, 0.0)
    try:
        answer = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], user=tag
        )
        whole = answer.choices[0].finish_reason and answer.choices[0].message.content == prompt
        outcome.kind = COMPLETE if whole else UNCLEAR
        outcome.status = 200
    except openai.APIStatusError as exc:
        _status_error(outcome, exc)
    except (openai.APIError, *TRANSPORT_ERRORS) as exc:
        outcome.detail = f"{type(exc).__name__}: {exc}"[:200]
    outcome.took_s = time.monotonic() - began
    return outcome


def _status_error(outcome: Outcome, exc: openai.APIStatusError) -> None:
    outcome.status = exc.status_code
    try:
        body = exc.response.json()
    except ValueError:
        body = None
    outcome.kind = CLEAR_ERROR if is_openai_error(body) else UNCLEAR
    outcome.code = (body or {}).get("error", {}).get("code") if isinstance(body, dict) else None
    outcome.detail = exc.response.text[:200]


_tags = itertools.count()


@dataclass
class Load:
    """`workers` concurrent loops of requests (alternately streamed and not) until stopped.

    `bound_s` is the most one request may take before it counts as hung.
    """

    target: Target
    stream_model: str = "openai/drip-40"
    plain_model: str = "openai/slow-300"
    workers: int = 6
    bound_s: float = 30.0
    prompt: str = PROMPT
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        for worker in range(self.workers):
            self._tasks.append(asyncio.create_task(self._run(worker)))

    async def stop(self) -> list[Outcome]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.outcomes

    async def _run(self, worker: int) -> None:
        client = self.target.client(self.bound_s + 5)
        try:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                stream = (worker + n) % 2 == 0
                tag = f"chaos-{next(_tags)}-{time.monotonic_ns()}"
                self.outcomes.append(await self.one(client, stream, tag))
        finally:
            await client.close()

    async def one(self, client: openai.AsyncOpenAI, stream: bool, tag: str) -> Outcome:
        began = time.monotonic()
        call = streamed if stream else plain
        model = self.stream_model if stream else self.plain_model
        try:
            async with asyncio.timeout(self.bound_s):
                return await call(client, model, tag, self.prompt)
        except TimeoutError:
            return Outcome(tag, stream, HUNG, began, time.monotonic() - began)


@contextlib.asynccontextmanager
async def running(load: Load) -> Any:
    load.start()
    try:
        yield load
    finally:
        await load.stop()


@dataclass(frozen=True)
class Figures:
    """What one fault looked like to the apps: counts, how long errors went on, the slowest."""

    fault: str
    requests: int
    complete: int
    errors: collections.Counter[str]
    violations: list[Outcome]
    error_window_s: float  # from the fault to the end of the last failed request
    slowest_s: float
    outcomes: list[Outcome]  # every request of the run (and the probes after it)

    def line(self) -> str:
        codes = ", ".join(f"{code} x{n}" for code, n in self.errors.most_common()) or "none"
        return (
            f"{self.fault}: {self.requests} requests, {self.complete} complete, errors: {codes}; "
            f"errors for {self.error_window_s:.1f} s after the fault; "
            f"slowest {self.slowest_s:.1f} s"
        )


def figures(fault: str, outcomes: list[Outcome], fault_at: float) -> Figures:
    failed = [o for o in outcomes if o.kind != COMPLETE]
    window = max((o.began + o.took_s - fault_at for o in failed), default=0.0)
    return Figures(
        fault=fault,
        requests=len(outcomes),
        complete=sum(o.kind == COMPLETE for o in outcomes),
        errors=collections.Counter(f"{o.status} {o.code}" for o in failed if o.kind == CLEAR_ERROR),
        violations=[o for o in outcomes if o.kind in VIOLATIONS],
        error_window_s=max(0.0, window),
        slowest_s=max((o.took_s for o in outcomes), default=0.0),
        outcomes=outcomes,
    )


def served_twice(recorded: list[dict[str, Any]], tags: Iterator[str] | list[str]) -> list[str]:
    """The tags among `tags` the fake upstream received more than once."""
    wanted = set(tags)
    counts = collections.Counter(r["tag"] for r in recorded if r["tag"] in wanted)
    return sorted(tag for tag, n in counts.items() if n > 1)


async def wait_serving(
    target: Target, within_s: float, check: Callable[[Outcome], bool], seen: list[Outcome]
) -> float:
    """Seconds until a fresh streamed and a plain request both complete; fails after `within_s`.
    Every probe's outcome is added to `seen`."""
    load = Load(target, workers=0, bound_s=10)
    began = time.monotonic()
    client = target.client(15)
    try:
        while True:
            results = [
                await load.one(client, stream, f"probe-{next(_tags)}") for stream in (True, False)
            ]
            seen.extend(results)
            if all(check(r) for r in results):
                return time.monotonic() - began
            assert time.monotonic() - began < within_s, f"not serving again: {results}"
            await asyncio.sleep(0.2)
    finally:
        await client.close()
