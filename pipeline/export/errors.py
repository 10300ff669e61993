"""The one error type of `export`: a message for the user and the exit code that goes with it."""

from __future__ import annotations

from ..exits import ExitCode

EXIT_USAGE = ExitCode.USAGE  # the source is not a finished output folder, a flag is wrong, DEST is not empty
EXIT_OUTPUT = ExitCode.OUTPUT  # DEST cannot be written (missing bucket, denied, disk full, ...)


class ExportError(Exception):
    """Nothing was exported (complete): the message names the file, row or URL and how to fix it."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code
