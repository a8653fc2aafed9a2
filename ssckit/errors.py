"""User-facing errors: the CLI prints them as one line and exits non-zero (``--debug`` shows the traceback)."""
from __future__ import annotations

from pathlib import Path


class SsckitError(Exception):
    """An error caused by the user's input (files, options, configs), not by a bug in ssckit."""


class DataError(SsckitError):
    """A data file is missing, truncated, of the wrong size or unparsable. The message names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
