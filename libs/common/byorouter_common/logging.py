"""One logging setup for every process: structured lines on stderr, secrets redacted.

Redaction happens in the formatter attached to the root handler, so it covers every logger that
propagates there: ours, uvicorn's, httpx/aiohttp's, SQLAlchemy's and nats-py's. It runs on the
message and on each field before they are encoded: once JSON has escaped a quote, a secret inside
a message (`{"api_key": ...}`) no longer looks like one.
"""

from __future__ import annotations

import logging
import sys
import time
from itertools import islice
from typing import Any

import orjson

from byorouter_common.redact import REDACTED, is_secret_field, redact, redact_value

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}
# LogRecord.__init__ sets its own attributes first; `extra` fields and anything a filter adds come
# after them, so a record's fields are read from there on (still checked against _RESERVED).
_STANDARD_FIELDS = len(vars(logging.LogRecord("", 0, "", 0, "", (), None)))


class RedactingJsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        # The timestamp's seconds, formatted once per second rather than once per line.
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "ts": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in islice(record.__dict__.items(), _STANDARD_FIELDS, None):
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = REDACTED if is_secret_field(key) and value else redact_value(value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=lambda v: redact(str(v))).decode()


class RedactingTextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        RedactingJsonFormatter(service) if fmt == "json" else RedactingTextFormatter(service)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that install their own handlers must go through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream", "nats", "aiohttp"):
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
