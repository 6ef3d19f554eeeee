"""The one exception type the CLI turns into a clean message and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a message naming the thing and the fix.

    The CLI prints ``error: <message>`` to stderr and exits with code 2, without a
    traceback. Raise it *before* anything is written to a study.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)
