"""Which secret a `hello` carries: the short-lived session token while one is valid, else the
long-lived tunnel token.

So the long-lived token crosses the network once per client run (and after a session lapses),
not on every reconnect; a session token that leaks expires within minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A session token this close to its expiry (or a tenth of its life, if shorter) is not offered:
# it could lapse in flight.
_EXPIRY_MARGIN_S = 5.0


@dataclass
class Credentials:
    token: str = field(repr=False)
    clock: Callable[[], float] = time.monotonic
    _session: str | None = field(default=None, repr=False)
    _session_usable_until: float = 0.0

    def hello_fields(self) -> dict[str, str]:
        """The `hello` frame's secret: {"session": ...} or {"token": ...}."""
        if self._session is not None and self.clock() < self._session_usable_until:
            return {"session": self._session}
        return {"token": self.token}

    @property
    def has_session(self) -> bool:
        return "session" in self.hello_fields()

    def got_session(self, session: str, ttl_s: float) -> None:
        """From a `welcome` or a `session` frame."""
        self._session = session
        self._session_usable_until = self.clock() + ttl_s - min(_EXPIRY_MARGIN_S, ttl_s / 10)

    def forget_session(self) -> None:
        """The service no longer knows the session (restart, revocation): use the token."""
        self._session = None
        self._session_usable_until = 0.0
