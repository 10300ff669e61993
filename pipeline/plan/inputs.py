"""The input images of img2img and the layer modes: read and hashed once per run, at planning.

A row's request covers its input images by content (sha256 of the file's bytes), never by location: moving the
files redoes nothing, changing one pixel redoes that row. Problems with a file (missing, unreadable, not an
image, the wrong size) are the row's, reported when its batch renders (status `failed`); they never stop a run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..common.storage import display, locate, scrub
from ..input.rows import Row


@dataclass(frozen=True)
class InputFile:
    """What planning learnt of one input image: its content hash and size, or why it cannot be used."""

    sha256: str | None = None
    width: int = 0
    height: int = 0
    error: str | None = None  # None: readable as an image


class InputFiles:
    """Input images by location, each read at most once per process (local files: again only when their size
    or modification time changed)."""

    def __init__(self) -> None:
        self._files: dict[tuple, InputFile] = {}

    def get(self, location: str) -> InputFile:
        key = _stamp(location)
        if key not in self._files:
            self._files[key] = _inspect(location)
        return self._files[key]

    def of(self, rows: Iterable[Row]) -> dict[str, InputFile]:
        """{location: InputFile} of every input image the rows use."""
        return {location: self.get(location) for row in rows for location in row.images().values()}


def _stamp(location: str) -> tuple:
    if "://" in location:
        return (location,)
    try:
        stat = os.stat(location)
    except OSError:
        return (location, None)
    return (location, stat.st_size, stat.st_mtime_ns)


def read_location(location: str) -> bytes:
    fs, path = locate(location)
    return fs.cat_file(path)


def _inspect(location: str) -> InputFile:
    shown = display(location)
    try:
        data = read_location(location)
    except FileNotFoundError:
        return InputFile(error=f"input image {shown}: no such file; check the path (relative paths start at the "
                         "table's folder)")  # fmt: skip
    except Exception as exc:  # denied, unreachable, a folder: the row's problem, not the run's
        return InputFile(error=scrub(f"input image {shown}: cannot read: {type(exc).__name__}: {exc}", location))
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as exc:
        return InputFile(error=f"input image {shown}: not an image ({type(exc).__name__}); give a PNG")
    return InputFile(hashlib.sha256(data).hexdigest(), width, height)


def problem(row: Row, files: Mapping[str, InputFile]) -> str | None:
    """Why the row cannot use its input images (missing, unreadable, another size), or None."""
    for name, location in row.images().items():
        file = files.get(location)
        if file is None or file.error:
            return file.error if file else f"input image {display(location)} was not planned"
        if (file.width, file.height) != (row.width, row.height):
            return (f"column {name!r}: input image {display(location)} is {file.width}x{file.height}, the row makes "
                    f"{row.width}x{row.height} images; resize the image or set the row's width and height to "
                    f"its size (multiples of 64)")  # fmt: skip
    return None


def usage_key(row: Row, files: Mapping[str, InputFile], weights: Mapping[str, str]) -> str:
    """What a row's request hash adds for its inputs: the values it uses, its images' content hashes and the
    extra weights they run through; "" for a plain text-to-image row (its hash stays what it always was)."""
    used = row.inputs()
    if not used:
        return ""
    for name, location in row.images().items():
        file = files.get(location)
        used[name] = file.sha256 if file and file.sha256 else "unreadable"
    if row.image is not None or row.hires_scale is not None:
        used["encoder_weights"] = weights.get("encoder")
    for mode in modes_of(row):
        used[f"{mode}_weights"] = weights.get(mode)
    return json.dumps(used, sort_keys=True, separators=(",", ":"))


def modes_of(row: Row) -> tuple[str, ...]:
    """The conditional layer models a row runs through (`layers` runs two or three)."""
    if row.mode == "layers":
        return ("bg2blend", "blend2fg") if row.background is not None else ("fg2blend", "blend2bg")
    return () if row.mode == "fg" else (row.mode,)


def needs(rows: Iterable[Row]) -> tuple[bool, tuple[str, ...]]:
    """(whether some row encodes an image, the conditional modes some row uses): what the model must load."""
    encoder, modes = False, set()
    for row in rows:
        encoder = encoder or row.image is not None or row.hires_scale is not None
        modes.update(modes_of(row))
    return encoder, tuple(sorted(modes))


def load_images(rows: list[Row], files: Mapping[str, InputFile]) -> dict[str, np.ndarray]:
    """{column: uint8 [B, H, W, C]} of the rows' input images, read again and checked against the hash that
    planning recorded (a file changed since then would be recorded with the wrong identity). All RGBA: the
    layer models flatten a condition image onto mid-grey by its alpha, as Forge does (opaque ones are unchanged)."""
    stacks = {}
    for name in rows[0].images():
        arrays = []
        for row in rows:
            location = getattr(row, name)
            data = read_location(location)
            if hashlib.sha256(data).hexdigest() != files[location].sha256:
                raise InputChanged(f"input image {display(location)} changed while the run was going; rerun")
            arrays.append(decode(data))
        stacks[name] = np.stack(arrays)
    return stacks


class InputChanged(RuntimeError):
    """An input image's bytes differ from those planning hashed."""


def decode(data: bytes) -> np.ndarray:
    """uint8 [H, W, 4]; an image without alpha is opaque, a palette's transparency is kept."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGBA"))
