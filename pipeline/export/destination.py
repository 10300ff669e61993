"""Where an export goes (a local folder or an fsspec URL). Every file appears whole or not at all."""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, BinaryIO

from .errors import EXIT_OUTPUT, ExportError
from .location import is_local, resolve


@dataclass(frozen=True)
class Destination:
    url: str
    fs: Any  # fsspec.AbstractFileSystem
    root: str
    local: bool

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def sync(self) -> None:
        """Make what was written without fsync durable (local folders; object stores have nothing to flush)."""
        if self.local:
            os.sync()


def open_destination(url: str, overwrite: bool = False) -> Destination:
    """DEST, checked to be empty (or emptied with `overwrite`) so that no earlier shard mixes in."""
    fs, root = resolve(url, "--to")
    dest = Destination(str(url), fs, root, is_local(fs))
    try:
        _make_room(dest, overwrite)
    except OSError as exc:
        raise ExportError(f"--to {url}: cannot be used: {exc}", EXIT_OUTPUT) from None
    return dest


def _make_room(dest: Destination, overwrite: bool) -> None:
    fs, root = dest.fs, dest.root
    if fs.isfile(root):
        raise ExportError(f"--to {dest.url}: is a file; give a folder (or prefix) for the export")
    existing = fs.ls(root, detail=False) if fs.exists(root) else []
    if existing and not overwrite:
        raise ExportError(f"--to {dest.url}: not empty ({len(existing)} entries, e.g. {existing[0]}); "
                          "choose a new folder, or pass --overwrite to delete its contents first")  # fmt: skip
    if existing:
        fs.rm(root, recursive=True)
    if dest.local:  # object stores have no folders to create (and creating one could create a bucket)
        fs.makedirs(root, exist_ok=True)


@contextmanager
def new_file(dest: Destination, name: str, durable: bool = True) -> Iterator[BinaryIO]:
    """A writable file that appears at DEST/name only once the block completes without error.

    Local folders: a temporary file beside it, renamed into place (after fsync when `durable`).
    Other filesystems: a local temporary file, then one upload (`put_file`), so an object store never
    shows a partial object; nothing is uploaded when the block fails.
    """
    path = dest.path(name)
    try:
        if dest.local:
            with _renamed_into_place(path, durable) as handle:
                yield handle
        else:
            with _uploaded_when_complete(dest.fs, path) as handle:
                yield handle
    except OSError as exc:
        raise ExportError(f"cannot write {dest.url} ({name}): {exc}", EXIT_OUTPUT) from None


def put_bytes(dest: Destination, name: str, data: bytes, durable: bool = True) -> None:
    """DEST/name with `data`, whole or not at all (one PUT on object stores)."""
    if dest.local:
        with new_file(dest, name, durable) as handle:
            handle.write(data)
        return
    try:
        dest.fs.pipe_file(dest.path(name), data)
    except OSError as exc:
        raise ExportError(f"cannot write {dest.url} ({name}): {exc}", EXIT_OUTPUT) from None


@contextmanager
def _renamed_into_place(path: str, durable: bool) -> Iterator[BinaryIO]:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextmanager
def _uploaded_when_complete(fs: Any, path: str) -> Iterator[BinaryIO]:
    # Spooled on local disk (TMPDIR), not in memory: a shard may be gigabytes.
    with tempfile.NamedTemporaryFile(prefix="layerdiffuse-export-", suffix=".part") as spool:
        yield spool
        spool.flush()
        fs.put_file(spool.name, path)
