"""What a bus endpoint is: a subject plus its request and reply models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict

Req = TypeVar("Req", bound=BaseModel)
Rep = TypeVar("Rep", bound=BaseModel)
Evt = TypeVar("Evt", bound=BaseModel)


class Contract(BaseModel):
    """Base for every payload on the bus: unknown fields are refused, so typos fail loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
