"""Sprite sheets: pack sprites into one or more PNG sheets with TexturePacker "JSON (Hash)" files.

The JSON layout is the one Phaser (`load.atlas`), PixiJS (`Assets.load` / `Spritesheet`) and other
engines' TexturePacker importers read. Sheets are named `<name>-0.png` + `<name>-0.json`,
`<name>-1.png` + ..., numbered in packing order even when there is one; packing the same inputs again
gives byte-identical files. Packing is rectpack's skyline bottom-left with a waste map, largest area
first, without rotation: nearly as dense as MaxRects here and several times faster on a thousand frames.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .. import __version__
from ..common.names import SAFE_NAME
from .derive import alpha_bbox, crop

MIN_SHEET = 64  # smallest square tried before growing by powers of two


class AtlasError(ValueError):
    """The sprites cannot be packed as asked; the message names the sprite and the fix."""


@dataclass(frozen=True)
class AtlasInput:
    """One sprite to pack; `source_size` and `offset` say where it lies in a larger logical canvas."""

    name: str  # the frame's name in the JSON
    rgba: np.ndarray = field(compare=False, repr=False)  # uint8 [H, W, 4], straight or premultiplied alpha
    source_size: tuple[int, int] | None = None  # width, height of the logical canvas; None: the sprite itself
    offset: tuple[int, int] = (0, 0)  # the sprite's top-left corner in that canvas

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise AtlasError(f"sprite names must be non-empty text, got {self.name!r}")
        rgba = self.rgba
        if not isinstance(rgba, np.ndarray) or rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
            raise AtlasError(f"sprite {self.name!r}: expected a uint8 RGBA array [H, W, 4]")
        if rgba.shape[0] < 1 or rgba.shape[1] < 1:
            raise AtlasError(f"sprite {self.name!r} has no pixels")
        x, y = self.offset
        width, height = self.source_size or (rgba.shape[1], rgba.shape[0])
        if x < 0 or y < 0 or x + rgba.shape[1] > width or y + rgba.shape[0] > height:
            raise AtlasError(f"sprite {self.name!r} at {self.offset} does not fit in its {width}x{height} canvas")


@dataclass(frozen=True)
class Frame:
    """A sprite's place on a sheet and in its logical canvas (TexturePacker's terms)."""

    name: str
    x: int  # on the sheet
    y: int
    w: int
    h: int
    source_x: int  # spriteSourceSize: where the frame's pixels lie in the logical canvas
    source_y: int
    source_w: int  # sourceSize: the logical canvas
    source_h: int

    @property
    def trimmed(self) -> bool:
        return (self.source_x, self.source_y, self.w, self.h) != (0, 0, self.source_w, self.source_h)

    def to_json(self) -> dict:
        return {
            "frame": {"x": self.x, "y": self.y, "w": self.w, "h": self.h},
            "rotated": False,
            "trimmed": self.trimmed,
            "spriteSourceSize": {"x": self.source_x, "y": self.source_y, "w": self.w, "h": self.h},
            "sourceSize": {"w": self.source_w, "h": self.source_h},
        }


@dataclass(frozen=True)
class Placement:
    """Where a frame's pixels go on its sheet."""

    name: str
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Sheet:
    width: int
    height: int
    frames: tuple[Placement, ...]  # sorted by name


def atlas_files(
    sprites: Sequence[AtlasInput], name: str = "atlas", max_size: int = 2048, padding: int = 2, trim: bool = False
) -> dict[str, bytes]:
    """The sheets and their JSON as {file name: bytes}, in sheet order (PNG, then JSON, per sheet)."""
    _check_args(name, max_size, padding)
    pieces = {s.name: _piece(s, trim) for s in _unique(sprites)}
    sheets = plan_sheets({n: (p[0].shape[1], p[0].shape[0]) for n, p in pieces.items()}, max_size, padding)
    names = [f"{name}-{i}" for i in range(len(sheets))]
    files = {}
    for sheet, stem in zip(sheets, names, strict=True):
        pixels = {f.name: pieces[f.name][0] for f in sheet.frames}
        files[f"{stem}.png"] = encode_sheet(render_sheet(sheet, pixels))
        layout = sheet_json(sheet, pieces, f"{stem}.png", [f"{n}.json" for n in names if n != stem])
        files[f"{stem}.json"] = (json.dumps(layout, indent=2) + "\n").encode()
    return files


def _check_args(name: str, max_size: int, padding: int) -> None:
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise AtlasError(f"atlas name {name!r} is not a safe file name; use 1-128 letters, digits, '.', '_' or '-'")
    if isinstance(max_size, bool) or not isinstance(max_size, int) or not 1 <= max_size <= 16384:
        raise AtlasError(f"maximum sheet size must be 1 to 16384 pixels, got {max_size!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or not 0 <= padding <= 1024:
        raise AtlasError(f"padding must be 0 to 1024 pixels, got {padding!r}")


def _unique(sprites: Sequence[AtlasInput]) -> list[AtlasInput]:
    """Sorted by name, so the packing does not depend on the order the sprites were found in."""
    by_name: dict[str, AtlasInput] = {}
    for sprite in sprites:
        if sprite.name in by_name:
            raise AtlasError(f"two sprites are named {sprite.name!r}; frame names must be unique")
        by_name[sprite.name] = sprite
    if not by_name:
        raise AtlasError("no sprites to pack")
    return [by_name[n] for n in sorted(by_name)]


def _piece(sprite: AtlasInput, trim: bool) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """(frame pixels, their position in the logical canvas, the canvas size)."""
    rgba, (x, y) = sprite.rgba, sprite.offset
    source = sprite.source_size or (rgba.shape[1], rgba.shape[0])
    if trim:
        box = alpha_bbox(rgba) if rgba[:, :, 3].any() else (0, 0, 1, 1)  # nothing visible: keep one pixel
        rgba, x, y = crop(rgba, box), x + box[0], y + box[1]
    return rgba, (x, y), source


def plan_sheets(sizes: dict[str, tuple[int, int]], max_size: int, padding: int) -> list[Sheet]:
    """Where each frame goes: one square sheet as small as fits (64, 128, ... max_size), else several.

    Each rectangle is packed with `padding` extra pixels right and below, in a bin `padding` larger
    than the sheet, so frames are `padding` apart and the sheet's last row and column need none.
    """
    for name, (w, h) in sizes.items():
        if w > max_size or h > max_size:
            raise AtlasError(
                f"sprite {name!r} is {w}x{h} pixels, larger than the maximum sheet size {max_size}x{max_size}; "
                "raise the maximum sheet size or make the sprites smaller (sizes)"
            )
    area = sum((w + padding) * (h + padding) for w, h in sizes.values())
    side = min(MIN_SHEET, max_size)
    while side < max_size and (side + padding) ** 2 < area:  # too small for sure: no need to try
        side *= 2
    while side < max_size:
        bins = _pack(sizes, side, padding, count=1)
        if bins is not None:
            return bins
        side *= 2
    sheets = _pack(sizes, max_size, padding, count=len(sizes))
    if sheets is None:  # cannot happen: every sprite fits an empty sheet
        raise AtlasError(f"the sprites could not be packed into {max_size}x{max_size} sheets")
    return sheets


def _pack(sizes: dict[str, tuple[int, int]], side: int, padding: int, count: int) -> list[Sheet] | None:
    """rectpack into `count` bins of side x side; None if some rectangle did not fit."""
    import rectpack

    packer = rectpack.newPacker(
        bin_algo=rectpack.PackingBin.BFF, pack_algo=rectpack.SkylineBlWm, sort_algo=rectpack.SORT_AREA, rotation=False
    )
    packer.add_bin(side + padding, side + padding, count=count)
    for name, (w, h) in sizes.items():
        packer.add_rect(w + padding, h + padding, rid=name)
    packer.pack()
    placed = packer.rect_list()
    if len(placed) != len(sizes):
        return None
    sheets: dict[int, list] = {}
    for index, x, y, w, h, name in placed:
        sheets.setdefault(index, []).append((name, x, y, w - padding, h - padding))
    return [_sheet(sheets[i]) for i in sorted(sheets)]


def _sheet(placed: list) -> Sheet:
    """A sheet cropped to the frames it holds."""
    frames = tuple(Placement(*p) for p in sorted(placed))
    return Sheet(max(f.x + f.w for f in frames), max(f.y + f.h for f in frames), frames)


def render_sheet(sheet: Sheet, pixels: dict[str, np.ndarray]) -> np.ndarray:
    """The sheet's RGBA pixels: every frame's pixels at its place, transparent black elsewhere."""
    canvas = np.zeros((sheet.height, sheet.width, 4), np.uint8)
    for f in sheet.frames:
        canvas[f.y : f.y + f.h, f.x : f.x + f.w] = pixels[f.name]
    return canvas


def encode_sheet(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def sheet_json(sheet: Sheet, pieces: dict, image: str, related: list[str]) -> dict:
    """TexturePacker JSON (Hash); `related_multi_packs` lets PixiJS load the other sheets too."""
    frames = {}
    for p in sheet.frames:
        _, (x, y), (w, h) = pieces[p.name]
        frames[p.name] = Frame(p.name, p.x, p.y, p.w, p.h, x, y, w, h).to_json()
    meta = {
        "app": "layerdiffuse-batch",
        "version": __version__,
        "image": image,
        "format": "RGBA8888",
        "size": {"w": sheet.width, "h": sheet.height},
        "scale": "1",
    }
    if related:
        meta["related_multi_packs"] = related
    return {"frames": frames, "meta": meta}


def stale_files(names: Sequence[str], name: str, count: int) -> list[str]:
    """Of the file names in a folder, the numbered sheets of `name` beyond the first `count` (an earlier pack)."""
    pattern = re.compile(rf"{re.escape(name)}-(\d+)\.(png|json)")
    return [n for n in names if (match := pattern.fullmatch(n)) and int(match.group(1)) >= count]
