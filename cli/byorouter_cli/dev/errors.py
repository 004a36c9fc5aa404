"""The one error the dev stack raises when it cannot start, with the log lines that say why."""

from __future__ import annotations

from collections.abc import Sequence


class StackError(RuntimeError):
    """The stack could not start; `log_tail` holds the last lines of the child that failed."""

    def __init__(self, message: str, log_tail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.log_tail = list(log_tail)

    def __str__(self) -> str:
        if not self.log_tail:
            return self.message
        return self.message + "\n" + "\n".join(f"    {line}" for line in self.log_tail)
