"""The one error type of `export`: a message for the user and the exit code that goes with it."""

from __future__ import annotations

from ..common.exits import ExitCode


class ExportError(Exception):
    """Nothing was exported (complete): the message names the file, row or URL and how to fix it."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.USAGE):
        super().__init__(message)
        self.exit_code = exit_code
