"""Atomic PNG writes with prompt metadata; a manifest record is appended only after its PNG is in place."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from .faults import fault_point
from .outcome import Written
from .records import Row
from .schedulers import Scheduler

IMAGES = "images"


def _file_mode() -> int:
    """What `open()` would create: 0666 less the umask (mkstemp alone makes every file 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


@dataclass(frozen=True)
class PngSettings:
    """What every PNG of a run says about how it was made, and how hard it is compressed."""

    model: str  # short model label
    scheduler: Scheduler
    compress_level: int = 6


class OutputError(OSError):
    """The output folder cannot take a file (disk full, quota, read-only, ...)."""


def encode_png(rgba, row: Row, png: PngSettings) -> bytes:
    """RGBA PNG bytes; deterministic for the same pixels, row and settings (no timestamps inside)."""
    info = PngImagePlugin.PngInfo()
    height, width = rgba.shape[:2]
    info.add_text("parameters", a1111_parameters(row, png, width, height))
    for name, value in row.params().items():
        info.add_text(name, str(value))
    info.add_text("model", png.model)
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", pnginfo=info, compress_level=png.compress_level)
    return buffer.getvalue()


def a1111_parameters(row: Row, png: PngSettings, width: int, height: int) -> str:
    """The `parameters` text that AUTOMATIC1111-style readers and galleries show, in its field order."""
    sampler = f"Sampler: {png.scheduler.sampler}, "
    if png.scheduler.schedule_type:
        sampler += f"Schedule type: {png.scheduler.schedule_type}, "
    return (
        f"{row.prompt}\nNegative prompt: {row.negative_prompt}\n"
        f"Steps: {row.num_inference_steps}, {sampler}CFG scale: {row.guidance_scale:g}, "
        f"Seed: {row.seed}, Size: {width}x{height}, Model: {png.model}, Transparency: LayerDiffuse"
    )


def write_atomic(path: Path, data: bytes, moment: str | None = None) -> None:
    """Temporary file in the same folder, fsync, rename: readers see the old file or the new, never half.

    `moment`: the fault point reached once the temporary file is complete (see faults.py).
    """
    written = 0
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot create a file in {path.parent}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            view = memoryview(data)
            while written < len(data):
                written += handle.write(view[written:])
            handle.flush()
            os.fsync(handle.fileno())
        if moment:
            fault_point(moment)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        message = f"cannot write {path}: {exc.strerror or exc} ({written} of {len(data)} bytes written)"
        raise OutputError(exc.errno, message) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path, max_age_elsewhere: float = 3600) -> int:
    """Delete temporary files that killed writers left behind.

    Temporary names carry the writer's host and pid: on this host a file is stale when its process is
    gone; a file from another host (shared folders) when it is older than `max_age_elsewhere` seconds.
    """
    removed = 0
    here = _owner_tag().split("@")[0]
    for path in folder.glob(".*.tmp"):
        host, pid = _owner(path.name)
        try:
            if host == here:
                stale = pid is not None and pid != os.getpid() and not _alive(pid)
            else:
                stale = time.time() - path.stat().st_mtime > max_age_elsewhere
            if stale:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # its writer renamed or removed it meanwhile
    return removed


def _owner_tag() -> str:
    """`<host>@<pid>` of this process, with the host's dots replaced (file names split on them)."""
    return f"{socket.gethostname().replace('.', '_')}@{os.getpid()}"


def _owner(name: str) -> tuple[str | None, int | None]:
    """(host tag, pid) from `.<file>.<host>@<pid>.<random>.tmp`."""
    match = re.search(r"\.([^.@]+)@(\d+)\.[^.]+\.tmp$", name)
    return (match.group(1), int(match.group(2))) if match else (None, None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def write_image(out_dir: Path, row: Row, rgba, png: PngSettings) -> Written:
    """Encode and write `images/<key>.png` atomically; returns what the manifest records about it."""
    started = time.perf_counter()
    data = encode_png(rgba, row, png)
    path = out_dir / IMAGES / f"{row.key}.png"
    write_atomic(path, data, moment="png_temp_written")
    height, width = rgba.shape[:2]
    image = {"url": f"{IMAGES}/{path.name}", "content_type": "image/png", "file_name": path.name,
             "file_size": len(data), "width": width, "height": height}  # fmt: skip
    return Written(image, hashlib.sha256(data).hexdigest(), round(time.perf_counter() - started, 4))


class ManifestPart:
    """An append-only JSON-lines log of one process's records; each line is flushed and fsynced.

    Safe to append from the writer thread and the main thread.
    """

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")  # created with the umask's permissions
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            try:
                self._handle.write(line)
                self._handle.flush()
                os.fsync(self._handle.fileno())
            except OSError as exc:  # a cut-off line is ignored by readers; its row is redone next run
                raise OutputError(exc.errno, f"cannot append to {self.path}: {exc.strerror or exc}") from exc
        fault_point("record_appended")

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ManifestPart:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
