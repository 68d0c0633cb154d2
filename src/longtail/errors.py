"""One error type for every user-facing problem: what went wrong, and how to fix it."""

from __future__ import annotations


class LongtailError(Exception):
    """A problem with the user's input, data or configuration.

    The command line prints ``problem`` and ``fix`` and exits with status 2, without a traceback.
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")
