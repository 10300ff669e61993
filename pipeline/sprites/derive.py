"""Game-ready sprites from a raw RGBA canvas: trim, pad, square / power-of-two canvas, sizes, bleed.

Every function takes and returns uint8 RGBA arrays [H, W, 4] with straight (not premultiplied) alpha,
except the optional premultiplied export at the very end. Resampling works on premultiplied colour in
float32 with a filter without negative weights, so that fully transparent pixels (whose colour is
arbitrary) never leak into the edges.

Steps, per target size: trim to the alpha bounding box -> scale the content so that the final sprite's
longest side is the size (padding included) -> pad -> square and/or power-of-two canvas, content
centred -> colour bleed -> premultiplied export.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..input.sprite_settings import FULL, MAX_SIDE, SpriteSettings, parse_sizes

__all__ = ["FULL", "MAX_SIDE", "SpriteSettings", "parse_sizes"]  # the settings live beside, free of numpy

Box = tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class Sprite:
    """One derived image and where its content came from."""

    label: str  # "full" at source scale, else the target size, e.g. "256"
    rgba: np.ndarray = field(compare=False, repr=False)
    trim_box: Box  # content's box in the source canvas; width 0 when nothing was above the threshold
    content_box: Box  # where that content lies in this sprite, after scaling, padding and centring
    source_size: tuple[int, int]  # width, height of the source canvas

    @property
    def size(self) -> tuple[int, int]:
        return self.rgba.shape[1], self.rgba.shape[0]

    def to_dict(self) -> dict:
        """Plain values for a manifest record (without the pixels)."""
        return {
            "label": self.label,
            "width": self.size[0],
            "height": self.size[1],
            "trim_box": list(self.trim_box),
            "content_box": list(self.content_box),
            "source_size": list(self.source_size),
        }


def derive(rgba: np.ndarray, settings: SpriteSettings) -> list[Sprite]:
    """The sprites for one raw canvas: one per target size, or one at source scale ("full")."""
    _check_rgba(rgba)
    box = alpha_bbox(rgba, settings.alpha_threshold) if settings.trim else (0, 0, rgba.shape[1], rgba.shape[0])
    content = crop(rgba, box) if box[2] else np.zeros((1, 1, 4), np.uint8)
    source_size = (rgba.shape[1], rgba.shape[0])
    if not settings.sizes:
        return [_finish(FULL, content, box, source_size, settings)]
    sprites = []
    for size in settings.sizes:
        scaled = resize_premultiplied(content, fit_longest(content.shape[1], content.shape[0], size - 2 * settings.pad))
        sprites.append(_finish(str(size), scaled, box, source_size, settings))
    return sprites


def _finish(label: str, content: np.ndarray, box: Box, source_size, settings: SpriteSettings) -> Sprite:
    """Lay the (scaled) content out on its canvas, then bleed or premultiply."""
    width, height = canvas_size(content.shape[1], content.shape[0], settings.pad, settings.square, settings.pot)
    canvas, content_box = place_centred(content, width, height)
    if settings.bleed:
        canvas = bleed(canvas)
    if settings.premultiplied:
        canvas = premultiply(canvas)
    return Sprite(label, canvas, box, content_box, source_size)


def _check_rgba(rgba) -> None:
    if not isinstance(rgba, np.ndarray) or rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        shape = getattr(rgba, "shape", None)
        raise ValueError(f"expected a uint8 RGBA array of shape [H, W, 4], got {type(rgba).__name__} {shape}")
    if rgba.shape[0] < 1 or rgba.shape[1] < 1:
        raise ValueError(f"expected an image of at least 1x1 pixels, got shape {rgba.shape}")


def alpha_bbox(rgba: np.ndarray, threshold: int = 0) -> Box:
    """Bounding box of the pixels with alpha > threshold; (0, 0, 0, 0) when there are none."""
    mask = rgba[:, :, 3] > threshold
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def crop(rgba: np.ndarray, box: Box) -> np.ndarray:
    x, y, w, h = box
    return rgba[y : y + h, x : x + w].copy()


def fit_longest(width: int, height: int, longest: int) -> tuple[int, int]:
    """Size with the longest side `longest` and the aspect ratio kept (the short side at least 1)."""
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def next_pot(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def canvas_size(width: int, height: int, pad: int, square: bool, pot: bool) -> tuple[int, int]:
    """Canvas for content of width x height: padding first, then square, then power of two."""
    width, height = width + 2 * pad, height + 2 * pad
    if square:
        width = height = max(width, height)
    if pot:
        width, height = next_pot(width), next_pot(height)
    return width, height


def place_centred(content: np.ndarray, width: int, height: int) -> tuple[np.ndarray, Box]:
    """Content on a transparent canvas, centred (an odd remainder goes right / down)."""
    h, w = content.shape[:2]
    x, y = (width - w) // 2, (height - h) // 2
    canvas = np.zeros((height, width, 4), np.uint8)
    canvas[y : y + h, x : x + w] = content
    return canvas, (x, y, w, h)


def resize_premultiplied(rgba: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize on premultiplied float colour, then back to straight alpha.

    Resampling straight colour would mix the (arbitrary, often black) colour of transparent pixels
    into the edges: a dark fringe. Premultiplied, a transparent pixel weighs nothing. Float32 keeps
    the colour of faint pixels exact, which Pillow's own 8-bit premultiplied path rounds away.
    """
    if (rgba.shape[1], rgba.shape[0]) == tuple(size):
        return rgba.copy()
    alpha = rgba[:, :, 3].astype(np.float32)
    channels = [rgba[:, :, c].astype(np.float32) * (alpha / 255.0) for c in range(3)] + [alpha]
    out = np.stack([_resize_float(c, size) for c in channels], axis=-1)
    out_alpha = out[:, :, 3]
    visible = out_alpha > 0
    colour = np.zeros(out.shape[:2] + (3,), np.float32)  # invisible pixels: no colour (bleed fills it)
    colour[visible] = out[visible, :3] * (255.0 / out_alpha[visible, None])
    result = np.empty(out.shape, np.uint8)
    result[:, :, :3] = np.rint(np.clip(colour, 0.0, 255.0))
    result[:, :, 3] = np.rint(np.clip(out_alpha, 0.0, 255.0))
    result[result[:, :, 3] == 0, :3] = 0
    return result


def _resize_float(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's Hamming filter: a windowed sinc cut at its first zero, so no weight is negative.

    Lanczos is a little sharper, but its negative lobes ring at hard alpha edges: a faint halo a
    pixel or two outside the shape and a dip in alpha inside it. Non-negative weights make every
    output colour a blend of visible input colours.
    """
    image = Image.fromarray(channel, mode="F")
    return np.asarray(image.resize(size, Image.Resampling.HAMMING), dtype=np.float32)


def bleed(rgba: np.ndarray) -> np.ndarray:
    """Colour of every fully transparent pixel from the nearest pixel with alpha > 0; alpha unchanged.

    Texture filtering and mipmaps average neighbouring texels colour-wise; without bleeding, the
    transparent neighbours' colour (usually black) darkens the edges.
    """
    from scipy.ndimage import distance_transform_edt  # imported here: scipy is slow to import

    empty = rgba[:, :, 3] == 0
    if not empty.any() or empty.all():
        return rgba.copy()
    # For each empty pixel, the index of the nearest non-empty one (Euclidean distance).
    rows, cols = distance_transform_edt(empty, return_distances=False, return_indices=True)
    out = rgba.copy()
    out[empty, :3] = rgba[rows[empty], cols[empty], :3]
    return out


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """Colour times alpha / 255, rounded to nearest (no ties: 255 is odd); alpha unchanged."""
    out = rgba.copy()
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    out[:, :, :3] = ((rgba[:, :, :3].astype(np.uint32) * alpha + 127) // 255).astype(np.uint8)
    return out
