"""How one cell of a table becomes a parameter value: the rules shared by table rows and config defaults.

Every parser takes the raw cell (text from CSV, typed values from Parquet / JSON Lines) and returns the
value or raises `CellError` whose message says what would be right.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any

MAX_PROMPT_CHARS = 20_000
MAX_SEED = 2**64 - 1
MAX_SIDE = 4096
MAX_STEPS = 1000
MAX_GUIDANCE = 50.0
MAX_HIRES_SCALE = 4.0  # a second pass larger than 4x is almost surely a typing mistake (and MAX_SIDE bounds it)
MAX_IMAGES = 1000  # images of one row (num_images); more is almost surely a typing mistake
TRUE_WORDS, FALSE_WORDS = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: text that no UTF-8 file can hold
_UNPLAIN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")  # control characters, lone surrogates


class CellError(ValueError):
    """One cell is wrong; the message says what would be right."""


_SLOW = object()  # a fast path's "not sure": the cell goes through the full rule


def column_rules(defaults) -> dict[str, tuple[Callable[[Any], Any], Any]]:
    """Per parameter column: the parser of a cell, and what an empty cell means (None: derived later).

    `defaults` is a `config.Defaults`; its values fill empty cells.
    """
    d = defaults
    return {
        "prompt": (lambda v: text(v, MAX_PROMPT_CHARS, d.allow_empty_prompt), "" if d.allow_empty_prompt else None),
        "negative_prompt": (lambda v: text(v, MAX_PROMPT_CHARS, allow_empty=True), d.negative_prompt),
        "seed": (lambda v: integer(v, 0, MAX_SEED), None),
        "guidance_scale": (lambda v: number(v, 0.0, MAX_GUIDANCE), d.guidance_scale),
        "num_inference_steps": (lambda v: integer(v, 1, MAX_STEPS), d.num_inference_steps),
        "width": (side, d.width),
        "height": (side, d.height),
        "enable_safety_checker": (boolean, d.enable_safety_checker),
        "loras": (lora_list, ()),
        "num_images": (lambda v: integer(v, 1, MAX_IMAGES), d.num_images),
        # img2img, hires and the layer modes (layer_inputs.py decides which of them a row uses)
        "image": (image_location, d.image),
        "strength": (lambda v: number(v, 0.0, 1.0), d.strength),
        "hires_scale": (lambda v: number(v, 1.0, MAX_HIRES_SCALE), d.hires_scale),
        "hires_strength": (lambda v: number(v, 0.0, 1.0), d.hires_strength),
        "mode": (mode_name, d.mode),
        "foreground": (image_location, d.foreground),
        "background": (image_location, d.background),
        "blend": (image_location, d.blend),
    }


# Fast paths per column: they accept only cells whose value is beyond doubt (the plain cases of a large table)
# and return `_SLOW` for everything else, which the full rule above then decides. A test checks agreement.
_FAST = {
    "prompt": lambda v: v if type(v) is str and v.strip() and _plain_text(v) else _SLOW,
    "negative_prompt": lambda v: v if type(v) is str and v and _plain_text(v) else _SLOW,
    "seed": lambda v: _plain_int(v, 0, MAX_SEED),
    "guidance_scale": lambda v: _plain_float(v, 0.0, MAX_GUIDANCE),
    "num_inference_steps": lambda v: _plain_int(v, 1, MAX_STEPS),
    "width": lambda v: _plain_side(v),
    "height": lambda v: _plain_side(v),
    "enable_safety_checker": lambda v: v if type(v) is bool else _WORDS.get(v, _SLOW) if type(v) is str else _SLOW,
    "loras": lambda v: () if v is None or v == "" else _SLOW,  # most rows of a table name no LoRA of their own
    "num_images": lambda v: _plain_int(v, 1, MAX_IMAGES),
    **dict.fromkeys(
        ("image", "foreground", "background", "blend", "strength", "hires_scale", "hires_strength", "mode"),
        lambda v: _SLOW,
    ),  # fmt: skip
}
_WORDS = {**dict.fromkeys(TRUE_WORDS, True), **dict.fromkeys(FALSE_WORDS, False)}
_DECIMAL = re.compile(r"[0-9]{1,15}(\.[0-9]{1,15})?")


def parse_column(name: str, values: list, defaults) -> tuple[list, dict[int, str]]:
    """A whole column at once: its values (defaults in empty cells; None where a seed is to be derived or
    the cell is wrong) and {position: message} for the wrong cells."""
    parse, default = column_rules(defaults)[name]
    fast = _FAST[name]
    out, errors = [], {}
    for position, raw in enumerate(values):
        value = fast(raw)
        if value is _SLOW:
            try:
                value = _slow(name, raw, parse, default)
            except CellError as exc:
                errors[position] = f"column {name!r}: value {show(raw)} {exc}"
                value = None
        out.append(value)
    return out, errors


def _slow(name: str, raw, parse, default):
    if problem := unwritable(raw):
        raise CellError(problem)
    if not missing(raw):
        return parse(raw)
    if name == "prompt" and default is None:
        raise CellError("is empty; every row needs a prompt (or pass --allow-empty-prompt)")
    return default


def _plain_text(value: str) -> bool:
    return len(value) <= MAX_PROMPT_CHARS and not _UNPLAIN.search(value)


def _plain_int(value, low: int, high: int):
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= 18:
        value = int(value)
    return value if type(value) is int and low <= value <= high else _SLOW


def _plain_float(value, low: float, high: float):
    if type(value) is str and _DECIMAL.fullmatch(value):
        value = float(value)
    elif type(value) is int:
        value = float(value) if abs(value) <= 2**53 else _SLOW
    return value if type(value) is float and low <= value <= high else _SLOW


def _plain_side(value):
    value = _plain_int(value, 64, MAX_SIDE)
    return value if value is not _SLOW and value % 64 == 0 else _SLOW


def missing(value) -> bool:
    """An empty cell: it takes the default."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def valid_text(text: str) -> str:
    """Text any file can hold: a lone surrogate (from a `\\ud800` escape in JSON) becomes U+FFFD."""
    return _SURROGATE.sub("\ufffd", text) if not text.isascii() else text


def lone_surrogate(value) -> str | None:
    """The first lone surrogate anywhere in a cell (text, or lists and objects of it), as `U+D800`."""
    if isinstance(value, str):
        found = None if value.isascii() else _SURROGATE.search(value)
        return f"U+{ord(found.group()):04X}" if found else None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple)):
        return next((found for v in value if (found := lone_surrogate(v))), None)
    return None


def unwritable(value) -> str | None:
    """Why a cell holds text that no file can store (a lone surrogate), or None."""
    found = lone_surrogate(value)
    if found is None:
        return None
    return (f"contains {found}, a lone surrogate (a JSON escape like \\ud800 without its pair) that is not "
            "valid Unicode; remove it or escape the whole character")  # fmt: skip


def show(value) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def text(value, max_chars: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise CellError(f"is a {type(value).__name__}; it must be text")
    if not allow_empty and not value.strip():
        raise CellError("is blank; write a prompt")
    if len(value) > max_chars:
        raise CellError(f"has {len(value)} characters; the limit is {max_chars} (CLIP reads only ~77 tokens)")
    if bad := _CONTROL.search(value):
        raise CellError(f"contains control character U+{ord(bad.group()):04X}; remove it")
    return value


def integer(value, low: int, high: int) -> int:
    parsed = _number(value, f"write an integer between {low} and {high}")
    if isinstance(parsed, float):
        if not parsed.is_integer() or abs(parsed) > 2**53:
            raise CellError(f"is not a whole number; write an integer between {low} and {high}")
        parsed = int(parsed)
    if not low <= parsed <= high:
        raise CellError(f"is out of range; use an integer between {low} and {high}")
    return parsed


def number(value, low: float, high: float) -> float:
    parsed = float(_number(value, f"write a number between {low:g} and {high:g}, e.g. 7.5"))
    if not low <= parsed <= high:
        raise CellError(f"is out of range; use a number between {low:g} and {high:g}")
    return parsed


def _number(value, hint: str) -> int | float:
    if isinstance(value, bool):
        raise CellError(f"is true/false; it must be a number: {hint}")
    if isinstance(value, str):
        stripped = value.strip()
        try:
            value = int(stripped)
        except ValueError:
            try:
                value = float(stripped)
            except ValueError:
                raise CellError(f"is not a number; {hint}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise CellError(f"is not finite; {hint}")
    if not isinstance(value, (int, float)):
        raise CellError(f"is a {type(value).__name__}; it must be a number: {hint}")
    return value


def side(value) -> int:
    parsed = integer(value, 64, MAX_SIDE)
    if parsed % 64:
        lower, upper = parsed - parsed % 64, parsed - parsed % 64 + 64
        raise CellError(f"is not a multiple of 64; the transparent decoder needs one (e.g. {lower or 64} or {upper})")
    return parsed


def lora_list(value) -> tuple:
    """A `loras` cell: `path:weight; path:weight` (or one per line), or a list of such references
    (Parquet, JSON Lines). Whether the files exist is checked when the run plans, not here."""
    from .lora_refs import LoraRef, LoraSpecError

    try:
        if isinstance(value, str):
            return _lora_text(value)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(LoraRef.parse(v) for v in value if v.strip())
    except LoraSpecError as exc:
        raise CellError(f"is no list of LoRAs: {exc}; write `path[:weight]; path[:weight]`") from None
    raise CellError(f"is a {type(value).__name__}; write LoRAs as text: `path[:weight]; path[:weight]`")


@functools.lru_cache(maxsize=65_536)
def _lora_text(text: str) -> tuple:
    """Large tables repeat a few LoRA lists: each distinct text is read once (the refs are immutable)."""
    from .lora_refs import parse_lora_list

    return parse_lora_list(text)


LAYER_MODES = ("fg", "fg2blend", "bg2blend", "blend2bg", "blend2fg", "layers")


def image_location(value) -> str:
    """An input image: a path (relative ones are resolved against the table's folder later) or a URL."""
    location = text(value, 4096, allow_empty=True).strip()
    if not location:
        raise CellError("is blank; write the path or URL of a PNG, or leave the cell empty")
    return location


def mode_name(value) -> str:
    if not isinstance(value, str) or value.strip().lower() not in LAYER_MODES:
        raise CellError(f"is not a layer mode; use one of {', '.join(LAYER_MODES)} (docs/layerdiffuse.md §9)")
    return value.strip().lower()


def boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise CellError("is not true or false; write true/false (also yes/no, 1/0)")
