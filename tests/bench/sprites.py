"""Deterministic 1024x1024 RGBA images that compress like LayerDiffuse sprites, for the benchmarks.

Real outputs are not random noise: an object with anti-aliased (1-2 px) alpha edges, sometimes a soft
semi-transparent shadow or glow, flat or shaded colour regions, low-amplitude texture and the decoder's
grain of a level or two, on a fully transparent background. Under alpha 0 the transparent decoder leaves
arbitrary colour (smooth colour bleed plus grain); some pipelines zero it. Both kinds are in the set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SIZE = 1024
COUNT = 6


@dataclass(frozen=True)
class SpriteStyle:
    """How one image of the set is drawn."""

    seed: int
    shapes: int  # blobs in the object's silhouette
    cel: bool  # flat posterised colours with a dark outline (game-sprite style) instead of painted shading
    texture: float  # amplitude (levels) of smooth low-frequency texture
    grain: float  # amplitude (levels) of fine 2-px grain, as left by the VAE
    shadow: bool  # a soft semi-transparent drop shadow
    background: str  # "zero": RGB 0 under alpha 0; "decoder": arbitrary smooth colour with grain


STYLES = (
    SpriteStyle(seed=1, shapes=3, cel=True, texture=2.0, grain=0.0, shadow=False, background="zero"),
    SpriteStyle(seed=2, shapes=4, cel=False, texture=6.0, grain=1.5, shadow=True, background="decoder"),
    SpriteStyle(seed=3, shapes=2, cel=False, texture=10.0, grain=2.5, shadow=False, background="decoder"),
    SpriteStyle(seed=4, shapes=5, cel=True, texture=3.0, grain=0.8, shadow=True, background="decoder"),
    SpriteStyle(seed=5, shapes=3, cel=False, texture=4.0, grain=1.0, shadow=True, background="zero"),
    SpriteStyle(seed=6, shapes=6, cel=False, texture=8.0, grain=2.0, shadow=False, background="decoder"),
)


@lru_cache(maxsize=1)
def sprites() -> tuple[np.ndarray, ...]:
    """The set: COUNT read-only uint8 [SIZE, SIZE, 4] straight-alpha images (same bytes on every run)."""
    images = tuple(draw(style) for style in STYLES[:COUNT])
    for image in images:
        image.setflags(write=False)
    return images


def sprite_batch(seeds) -> np.ndarray:
    """uint8 [B, SIZE, SIZE, 4]: one image of the set per seed (seed modulo the set's size)."""
    images = sprites()
    return np.stack([images[seed % len(images)] for seed in seeds])


def draw(style: SpriteStyle) -> np.ndarray:
    rng = np.random.default_rng(style.seed)
    distance, labels = silhouette(rng, style.shapes)
    alpha = np.clip(0.5 - distance / 1.2, 0, 1)  # anti-aliased edge, about 1-2 px wide
    rgb = colours(rng, style, distance, labels)
    if style.shadow:
        shadow = drop_shadow(rng, distance)
        rgb = rgb * alpha[..., None]  # shadow colour is black: premultiplied mix of object over shadow
        alpha = alpha + shadow * (1 - alpha)
        rgb = np.divide(rgb, alpha[..., None], out=np.zeros_like(rgb), where=alpha[..., None] > 1e-3)
    rgb = np.where(alpha[..., None] > 0, rgb, background(rng, style))
    return np.dstack([quantise(rgb), quantise(alpha * 255)])


def silhouette(rng: np.random.Generator, shapes: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (px, negative inside) of a union of ellipses and rounded boxes,
    and which shape is nearest at each pixel."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    fields = []
    for i in range(shapes):
        cx, cy = rng.uniform(0.3, 0.7, 2) * SIZE
        a, b = rng.uniform(0.08, 0.22, 2) * SIZE
        if i % 2 == 0:
            fields.append((np.hypot((xx - cx) / a, (yy - cy) / b) - 1) * min(a, b))
        else:
            radius = 0.3 * min(a, b)
            qx, qy = np.abs(xx - cx) - a + radius, np.abs(yy - cy) - b + radius
            outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
            fields.append(outside + np.minimum(np.maximum(qx, qy), 0) - radius)
    stacked = np.stack(fields)
    return stacked.min(axis=0), stacked.argmin(axis=0)


def colours(rng: np.random.Generator, style: SpriteStyle, distance: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Float RGB in 0-255: a base colour per shape, shading, texture, grain; cel style is posterised and outlined."""
    palette = rng.uniform(40, 220, (style.shapes, 3)).astype(np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32) / SIZE
    light = rng.uniform(-1, 1, 2)
    shading = 40 * (light[0] * (xx - 0.5) + light[1] * (yy - 0.5)) + 25 * np.clip(-distance / 60, 0, 1)
    rgb = palette[labels] + shading[..., None]
    if style.cel:
        rgb = np.round(rgb / 24) * 24  # flat bands
        rgb = np.where((distance > -6)[..., None], rgb * 0.25, rgb)  # dark outline
    rgb = rgb + style.texture * smooth_noise(rng, 24, 3) + style.grain * smooth_noise(rng, SIZE // 2, 3)
    return rgb


def drop_shadow(rng: np.random.Generator, distance: np.ndarray) -> np.ndarray:
    """A soft shadow below the object: alpha up to ~0.45 fading over tens of pixels."""
    shift = int(rng.integers(20, 60))
    below = np.full_like(distance, distance.max())
    below[shift:, shift // 2 :] = distance[:-shift, : SIZE - shift // 2]
    return 0.45 * np.clip(1 - below / 40, 0, 1) * np.clip(1 + below / 80, 0, 1)


def background(rng: np.random.Generator, style: SpriteStyle) -> np.ndarray:
    if style.background == "zero":
        return np.zeros((SIZE, SIZE, 3), np.float32)
    tint = rng.uniform(60, 200, 3).astype(np.float32)
    return tint + 30 * smooth_noise(rng, 8, 3) + 2 * smooth_noise(rng, SIZE // 2, 3)


def smooth_noise(rng: np.random.Generator, cells: int, channels: int) -> np.ndarray:
    """Noise in [-1, 1] with `cells` x `cells` degrees of freedom, bicubic-upsampled to SIZE (not white noise)."""
    from PIL import Image

    coarse = rng.uniform(-1, 1, (channels, cells, cells)).astype(np.float32)
    planes = [np.asarray(Image.fromarray(c).resize((SIZE, SIZE), Image.Resampling.BICUBIC)) for c in coarse]
    return np.clip(np.stack(planes, axis=-1), -1, 1)


def quantise(values: np.ndarray) -> np.ndarray:
    """Truncation to uint8, as the pipeline's `to_rgba_uint8` does."""
    return np.clip(values, 0, 255).astype(np.uint8)
