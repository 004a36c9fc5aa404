"""Start a service without packages its libraries would load for features it never uses.

Every module imported at start stays resident for the life of the process, so a package pulled
in only for an optional feature costs memory in every copy. Where a third-party library imports
such a package inside `try: import x / except ImportError: x = None`, a package marked absent in
`sys.modules` makes it take that fallback: nats-py and aiohttp (only for a `ws://` transport),
faststream and uvicorn (only for its ASGI mode), uvicorn and watchfiles (only for its reloader),
FastAPI and `pydantic.v1` (only for version-1 models). Each service's `__main__` says which,
before it imports anything else; `tests/project/test_lean_imports.py` keeps them out.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


def keep_out(*packages: str) -> None:
    """From now on this process imports `packages` as if not installed (unless already loaded)."""
    for name in packages:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not installed"


@contextmanager
def imported_without(*packages: str) -> Iterator[None]:
    """Imports in the block see `packages` as not installed; afterwards they import normally,
    for code that needs them later and loads them then (keystore's webhook sender, aiohttp)."""
    hidden = [name for name in packages if name not in sys.modules]
    keep_out(*hidden)
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
