"""Exit codes: one enum, and per command what each of its codes means (the `--help` epilogs and the README
table both come from here; a test compares the README with it)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # Python's own code for an uncaught exception
    USAGE = 2
    ROWS = 3
    MODEL = 4
    LOCKED = 5
    OUTPUT = 6
    TOO_MANY_FAILURES = 7
    INTERRUPTED = 130


_NOT_A_FOLDER = "DIR is not an output folder of `layerdiffuse generate`"
_STORAGE = "the storage failed (unreachable, HTTP errors, disk full, read-only); the message names the path"
MEANINGS: dict[str, dict[ExitCode, str]] = {
    "generate": {
        ExitCode.OK: "every row has its image (generated now or by an earlier run)",
        ExitCode.INTERNAL: "unexpected internal error (a bug; the log has an `error` event and the traceback)",
        ExitCode.USAGE: "usage error: bad flag, config or table; nothing was generated",
        ExitCode.ROWS: "the run finished but some rows are invalid or failed (see `error` in the manifest)",
        ExitCode.MODEL: "model weights missing, damaged or unloadable (the message names the files and how to "
        "provide them)",
        ExitCode.LOCKED: "another run holds the output folder (the message names its pid, host and start time)",
        ExitCode.OUTPUT: "the output folder cannot be written or read (disk full, quota, read-only, a file where a "
        "folder must be, an object store that fails after its retries); the message names the path",
        ExitCode.TOO_MANY_FAILURES: "stopped because more rows failed than `--max-failures` allows",
        ExitCode.INTERRUPTED: "interrupted by SIGINT or SIGTERM (from the moment the run holds its folder: after "
        "the current batch; a second Ctrl-C at once); rerun to continue",
    },
    "validate": {
        ExitCode.OK: "every row is valid",
        ExitCode.USAGE: "the table or config cannot be used (unreadable, empty, no prompt column, bad value)",
        ExitCode.ROWS: "some rows are invalid (each problem is listed)",
    },
    "status": {
        ExitCode.OK: "every row is done",
        ExitCode.USAGE: _NOT_A_FOLDER,
        ExitCode.ROWS: "some rows are pending, failed or invalid",
        ExitCode.OUTPUT: _STORAGE,
    },
    "merge": {
        ExitCode.OK: "the manifest was written",
        ExitCode.USAGE: _NOT_A_FOLDER,
        ExitCode.ROWS: "some rows have no outcome yet (run generate again to finish them)",
        ExitCode.OUTPUT: _STORAGE,
    },
    "report": {
        ExitCode.OK: "report.html and contact_sheet.png were written",
        ExitCode.USAGE: _NOT_A_FOLDER,
        ExitCode.ROWS: "written, but some images are missing or damaged (their cards say which; `generate --verify` "
        "makes them again)",
        ExitCode.OUTPUT: _STORAGE,
    },
    "sprites": {
        ExitCode.OK: "every finished image has its sprites as asked, and the manifest says so",
        ExitCode.USAGE: f"{_NOT_A_FOLDER}, or a flag or config is wrong",
        ExitCode.ROWS: "sprites derived, but some rows have no image yet (the manifest is merged when they do)",
        ExitCode.LOCKED: "another run holds the output folder",
        ExitCode.OUTPUT: _STORAGE,
    },
    "atlas": {
        ExitCode.OK: "the sheets and their JSON files were written",
        ExitCode.USAGE: f"{_NOT_A_FOLDER}, it has no sprites (of that label), or a sprite is larger than --max-size",
        ExitCode.OUTPUT: _STORAGE,
    },
    "export": {
        ExitCode.OK: "every selected row was exported; DEST/export.json was written last",
        ExitCode.USAGE: "DIR is not a finished output folder, an image differs from its record, or DEST is not empty",
        ExitCode.OUTPUT: "DIR cannot be read or DEST cannot be written (unreachable, HTTP errors, disk full, "
        "read-only); the message names the path",
    },
}


def epilog(command: str) -> str:
    """The `Exit codes:` block of a command's --help (`\\b` keeps Click from rewrapping it)."""
    lines = [f"  {int(code):<4} {meaning}" for code, meaning in MEANINGS[command].items()]
    return "\b\nExit codes:\n" + "\n".join(lines)


def markdown_table(command: str = "generate") -> str:
    rows = [f"| {int(code)} | {meaning} |" for code, meaning in MEANINGS[command].items()]
    return "\n".join(["| code | meaning |", "|---|---|", *rows])
