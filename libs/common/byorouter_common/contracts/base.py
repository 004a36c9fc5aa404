"""What a bus endpoint is: a subject plus its request and reply models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

Req = TypeVar("Req", bound=BaseModel)
Rep = TypeVar("Rep", bound=BaseModel)
Evt = TypeVar("Evt", bound=BaseModel)


class Contract(BaseModel):
    """Base for every payload on the bus: unknown fields are refused, so typos fail loudly."""

    # defer_build: a model's validator is built the first time it is used, not at import; each
    # service imports every contract but uses a few (about 1 MiB resident per process).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Empty(Contract):
    pass


def service_wildcard(service: str) -> str:
    """Every subject `service` serves: `byorouter.<service>.>`."""
    return f"byorouter.{service}.>"


@dataclass(frozen=True)
class Endpoint(Generic[Req, Rep]):
    """A request/reply subject served by one service's queue group."""

    subject: str
    request: type[Req]
    reply: type[Rep]
    service: str
    description: str

    @property
    def name(self) -> str:
        return self.subject.removeprefix(f"byorouter.{self.service}.").replace(".", "_")


@dataclass(frozen=True)
class Event(Generic[Evt]):
    """A fan-out subject: every subscribed copy of every interested service receives it."""

    subject: str
    payload: type[Evt]
    description: str


@dataclass(frozen=True)
class DurableStream:
    """A JetStream stream that keeps `events` on disk until their consumer has recorded them.

    For reports that must survive their recorder being down (usage is what users pay for).
    """

    name: str
    events: tuple[Event[Any], ...]
    max_age_s: float
    max_bytes: int
    # A publish retried with the same `Nats-Msg-Id` within this window is stored once.
    duplicate_window_s: float

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(event.subject for event in self.events)


@dataclass(frozen=True)
class DurableConsumer:
    """A durable pull consumer of one stream, shared by every copy of `service`."""

    stream: DurableStream
    name: str
    service: str


@dataclass(frozen=True)
class KeyValueBucket:
    """A JetStream key-value bucket that every copy of a service shares (state, not reports).

    Kept in memory on the NATS servers: losing it loses nothing a copy cannot rebuild.
    """

    name: str
    description: str
    # An entry nobody has written for this long is dropped; reading it then finds nothing.
    ttl_s: float
    max_bytes: int

    @property
    def stream(self) -> str:
        """The stream JetStream keeps the bucket in."""
        return f"KV_{self.name}"

    @property
    def subjects(self) -> str:
        """What a writer publishes to: `$KV.<bucket>.<key>`."""
        return f"$KV.{self.name}.>"
