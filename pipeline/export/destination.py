"""Where an export goes: an output location (pipeline/common/storage.py), checked to be empty first."""

from __future__ import annotations

from ..common.exits import ExitCode
from ..common.storage import Storage, StorageError, storage_failure
from .errors import ExportError


def open_destination(url: str, overwrite: bool = False) -> Storage:
    """DEST, checked to be empty (or emptied with `overwrite`) so that no earlier shard mixes in."""
    try:
        dest = Storage(url)
    except StorageError as exc:
        raise ExportError(f"--to {exc}") from None
    try:
        _make_room(dest, overwrite)
    except ExportError:
        raise
    except Exception as exc:
        failure = storage_failure(exc, str(dest))
        if failure is None:
            raise
        raise ExportError(f"--to {dest}: cannot be used: {failure}", ExitCode.OUTPUT) from None
    return dest


def _make_room(dest: Storage, overwrite: bool) -> None:
    fs, root = dest.fs, dest.root
    if fs.isfile(root):
        raise ExportError(f"--to {dest}: is a file; give a folder (or prefix) for the export")
    existing = fs.ls(root, detail=False) if fs.exists(root) else []
    if existing and not overwrite:
        raise ExportError(f"--to {dest}: not empty ({len(existing)} entries, e.g. {existing[0]}); "
                          "choose a new folder, or pass --overwrite to delete its contents first")  # fmt: skip
    if existing:
        fs.rm(root, recursive=True)
    dest.makedirs()  # object stores have no folders to create (and creating one could create a bucket)
