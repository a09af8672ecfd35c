"""User-facing errors.

A :class:`UserError` carries one line that names the file and the fix. The CLI prints it
without a traceback; library callers can catch it like any exception.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input (path, file, config) with a one-line explanation."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)
