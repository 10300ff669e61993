"""One run per output folder: an OS lock (flock) that dies with its process, so a stale lock never blocks.

A full run holds `DIR/.lock` exclusively. Shard jobs (`--shard I/N`) of one table may run side by side:
each holds `DIR/.lock` shared (which keeps full runs out) and `DIR/.lock-shard-I-of-N` exclusively.
The lock files carry the holder's pid, host and start time, for the message a refused run prints, and nothing
else: a command line may hold URL tokens (--notify, --ping) that have no place in the output folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from ..common.clock import utc_now
from ..common.fingerprint import cache_dir
from .layout import LOCK, shard_lock


class FolderLocked(RuntimeError):
    """Another run holds the output folder."""


class FolderLock:
    def __init__(self, out_dir: Path, shard: tuple[int, int] | None = None, name: str | None = None):
        """`name`: the folder as messages name it (a remote folder's locks live under the cache)."""
        self._fds: list[int] = []
        try:
            if shard is None:
                self._take(out_dir / LOCK, fcntl.LOCK_EX)
            else:
                self._take(out_dir / LOCK, fcntl.LOCK_SH)
                self._take(out_dir / shard_lock(*shard), fcntl.LOCK_EX)
        except BlockingIOError:
            self.release()
            message = f"{name or out_dir} is in use by another run: {holders(out_dir)}"
            raise FolderLocked(message + "; wait for it to finish (a killed run's lock is released)") from None
        except OSError:  # e.g. a read-only folder: the caller reports it (exit 6); no lock stays half taken
            self.release()
            raise

    def _take(self, path: Path, mode: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._fds.append(fd)
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        if mode == fcntl.LOCK_EX:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": utc_now()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing drops the flock
        self._fds = []

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holders(out_dir: Path) -> str:
    """Who holds the folder, from the lock files that are held now (pid, host, start time).

    While shard jobs hold `.lock` shared, its text is an old full run's: the shard files tell instead.
    """
    shards = [p for p in sorted(out_dir.glob(f"{LOCK}-shard-*")) if _held(p)]
    files = shards or [p for p in [out_dir / LOCK] if _held(p)]
    described = []
    for path in files:
        try:
            info = json.loads(path.read_text() or "{}")
            described.append(f"pid {info['pid']} on {info['host']} since {info['started_at']}")
        except (OSError, ValueError, KeyError):
            described.append(f"{path.name} (holder not recorded yet)")
    return "; ".join(described) or "a run that just finished (try again)"


def _held(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@contextmanager
def lock_folder(storage, process, shard=None):
    """One run per output folder. The main process of a launch locks for all of its processes; shard jobs
    lock for themselves. Object stores have no locks: a remote folder is locked on this machine only."""
    lock, refusal = None, None
    if process.leads:
        try:
            lock = FolderLock(_lock_folder(storage), shard, str(storage))
        except FolderLocked as exc:
            refusal = str(exc)
    refusal = process.share_from_main(refusal)
    if refusal:
        raise FolderLocked(refusal)
    try:
        yield
    finally:
        if lock:
            lock.release()


def _lock_folder(storage) -> Path:
    if storage.is_local:
        return storage.local()
    # keyed by the folder's normal form: s3a://b/run/ and s3://b/run are one folder, with one lock
    folder = cache_dir() / "locks" / hashlib.sha256(str(storage).encode()).hexdigest()[:32]
    folder.mkdir(parents=True, exist_ok=True)
    return folder
