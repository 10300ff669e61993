"""How sprites are derived from a raw canvas: the settings, shared by the config file, the flags and the manifest.

Plain Python (no numpy): the command line and the config read them without loading the image libraries.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

MAX_SIDE = 16384  # sizes and padding beyond this are typing mistakes, not sprites
FULL = "full"  # label of the sprite kept at source resolution (no sizes asked)


@dataclass(frozen=True)
class SpriteSettings:
    """How sprites are derived from a raw canvas; the same names as the flags and the config keys."""

    trim: bool = False  # crop to the bounding box of pixels with alpha > alpha_threshold
    alpha_threshold: int = 0  # 0..254: pixels at or below it count as empty when trimming
    pad: int = 0  # transparent border in output pixels, on every side
    square: bool = False  # square canvas, content centred
    pot: bool = False  # power-of-two width and height, content centred
    sizes: tuple[int, ...] = ()  # longest side of each output (padding included); () keeps the source scale
    bleed: bool = False  # colour of fully transparent pixels from the nearest visible pixel (for mipmaps)
    premultiplied: bool = False  # write colour multiplied by alpha

    def __post_init__(self):
        for name in ("trim", "square", "pot", "bleed", "premultiplied"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"sprite setting {name} must be true or false, got {getattr(self, name)!r}")
        _check_int("alpha_threshold", self.alpha_threshold, 0, 254)
        _check_int("pad", self.pad, 0, MAX_SIDE)
        object.__setattr__(self, "alpha_threshold", int(self.alpha_threshold))  # numpy or YAML ints alike
        object.__setattr__(self, "pad", int(self.pad))
        object.__setattr__(self, "sizes", _normalise_sizes(self.sizes, self.pad))
        if self.bleed and self.premultiplied:
            raise ValueError(
                "sprite settings bleed and premultiplied exclude each other: premultiplied colour is black "
                "wherever alpha is 0, which is what makes bleeding unnecessary; choose one"
            )

    @property
    def active(self) -> bool:
        """True when any step would change the raw canvas."""
        return self != SpriteSettings()

    def to_dict(self) -> dict:
        """Plain values for the manifest and run.json (sizes as a list)."""
        return {
            "trim": self.trim,
            "alpha_threshold": self.alpha_threshold,
            "pad": self.pad,
            "square": self.square,
            "pot": self.pot,
            "sizes": list(self.sizes),
            "bleed": self.bleed,
            "premultiplied": self.premultiplied,
        }


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(f"sprite setting {name} must be an integer from {low} to {high}, got {value!r}")


def _normalise_sizes(sizes, pad: int) -> tuple[int, ...]:
    """Distinct sizes, largest first (the order of the flag does not change the outputs)."""
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise ValueError(f"sprite setting sizes must be a list of integers, got {sizes!r}")
    sizes = tuple(sizes)
    for size in sizes:
        _check_int("sizes", size, 1, MAX_SIDE)
        if size <= 2 * pad:
            raise ValueError(f"size {size} leaves no room for the content inside a padding of {pad} on each side")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"sprite setting sizes lists a size twice: {list(sizes)}")
    return tuple(sorted((int(s) for s in sizes), reverse=True))


def parse_sizes(text: str) -> tuple[int, ...]:
    """`"512,256,64"` -> (512, 256, 64); a clear error for anything else."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts or not all(re.fullmatch(r"[0-9]+", p) for p in parts):
        raise ValueError(f"sizes must be comma-separated whole numbers of pixels, e.g. 512,256,64; got {text!r}")
    return tuple(int(p) for p in parts)
