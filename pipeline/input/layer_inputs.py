"""The per-row inputs of transparent img2img, hires and the layer modes (docs/layerdiffuse.md §7-9).

Each row uses only what its mode asks for: `image` and `strength` (img2img, mode fg), `hires_scale` and
`hires_strength` (mode fg), the condition images of a layer mode. What a row does not use is dropped here (None),
so it is neither read, nor hashed, nor recorded, and a table of plain text-to-image rows carries none of it.
"""

from __future__ import annotations

import os
import posixpath

from .cells import MAX_SIDE, parse_column

INPUT_COLUMNS = ("image", "strength", "hires_scale", "hires_strength", "mode", "foreground", "background", "blend")
IMAGE_COLUMNS = ("image", "foreground", "background", "blend")  # input images, in this order in records
# The condition images of each conditional layer model (model/conditional.py CONDITIONS; a test keeps them equal).
CONDITIONS = {
    "fg2blend": ("foreground",),
    "bg2blend": ("background",),
    "blend2bg": ("foreground", "blend"),
    "blend2fg": ("background", "blend"),
}
RGB_MODES = ("fg2blend", "bg2blend", "blend2bg")  # their images are RGB; the others RGBA
SIZE_STEP = 64


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """As model/img2img.py's: each side times `scale`, rounded to a multiple of 64 (at least 64)."""
    return tuple(max(SIZE_STEP, round(n * scale / SIZE_STEP) * SIZE_STEP) for n in (width, height))


def row_kind(mode: str, image: str | None, hires_scale: float | None, background: str | None) -> tuple | None:
    """What decides which model call a row needs; rows batch together only with the same kind. None: plain
    text-to-image (so plain rows batch exactly as before these inputs existed)."""
    if mode == "fg" and image is None and hires_scale is None:
        return None
    return (mode, image is not None, hires_scale, mode == "layers" and background is not None)


def uses_inputs(columns: dict[str, list], defaults) -> bool:
    """Whether any row can use an input: a column of them, or defaults that turn one on."""
    on = defaults.image is not None or defaults.hires_scale != 1.0 or defaults.mode != "fg"
    return on or any(name in columns for name in INPUT_COLUMNS)


def parse_inputs(columns: dict[str, list], defaults, params: dict[str, list], base: str | None,
                 errors: dict[int, list]) -> dict[str, list]:  # fmt: skip
    """Per INPUT_COLUMNS name, each row's value where the row uses it (else None); {} when no row can use any.
    `base`: the table's folder, against which relative image paths resolve; problems go into `errors`."""
    count = len(params["prompt"])
    if not uses_inputs(columns, defaults):
        return {}
    values = {}
    for name in INPUT_COLUMNS:
        cells = columns.get(name, [None])
        parsed, cell_errors = parse_column(name, cells, defaults)
        values[name] = parsed if name in columns else parsed * count
        for position, message in cell_errors.items():
            errors.setdefault(position, []).append(message)
    rows = [_used({name: values[name][i] for name in INPUT_COLUMNS}, params["width"][i], params["height"][i])
            for i in range(count)]  # fmt: skip
    for position, (_, problems) in enumerate(rows):
        if problems and position not in errors:  # a wrong cell explains itself; its consequences need not
            errors[position] = problems
    return {name: [_resolve(used.get(name), base, name) for used, _ in rows] for name in INPUT_COLUMNS}


def _used(row: dict, width: int | None, height: int | None) -> tuple[dict, list[str]]:
    """The values the row uses (the others None), and why the row cannot run as written."""
    mode, problems = row["mode"] or "fg", []
    hires = row["hires_scale"] if row["hires_scale"] is not None and row["hires_scale"] > 1.0 else None
    used = {"mode": mode}
    if mode == "fg":
        used.update(image=row["image"], strength=row["strength"] if row["image"] else None)
        used.update(hires_scale=hires, hires_strength=row["hires_strength"] if hires else None)
        if hires and width and height and max(hires_size(width, height, hires)) > MAX_SIDE:
            problems.append(f"column 'hires_scale': value {hires:g} makes {hires_size(width, height, hires)} "
                            f"images, larger than {MAX_SIDE}; use a smaller scale")  # fmt: skip
        return used, problems
    if row["image"]:
        problems.append(f"column 'image': img2img works in mode fg only, this row's mode is {mode!r}; leave "
                        "'image' empty or set mode to fg")  # fmt: skip
    if hires:
        problems.append(f"column 'hires_scale': hires works in mode fg only, this row's mode is {mode!r}; use 1")
    needed = CONDITIONS.get(mode, ("background",) if mode == "layers" else ())
    absent = [name for name in needed if not row[name]]
    if absent and mode != "layers":  # `layers` without a background makes one (fg -> fg2blend -> blend2bg)
        names = " and ".join(f"'{name}'" for name in absent)
        problems.append(f"column 'mode': value {mode!r} needs the {names} image(s); fill the column(s) {names} "
                        f"(or set defaults.{absent[0]} in the config)")  # fmt: skip
    used.update({name: row[name] for name in needed})
    return used, problems


def _resolve(value, base: str | None, name: str):
    """Input image locations: URLs and absolute paths as written, relative paths against the table's folder."""
    if name not in IMAGE_COLUMNS or value is None or base is None or "://" in value:
        return value
    if "://" in base:
        return posixpath.join(base, value)
    path = os.path.expanduser(value)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def table_folder(source: str) -> str:
    """The folder of a table's location (a local path or URL), where its relative image paths start."""
    if "://" in source:
        return source.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(os.path.expanduser(source)))
