"""Transparent img2img and hires with alpha (docs/layerdiffuse.md §7, §8).

img2img: RGBA input -> transparent encoder + SDXL VAE (encoder.py) -> latent -> noised to `strength` and
denoised by the LayerDiffuse UNet -> VAE decode + transparent decode -> straight RGBA uint8.
hires: the first pass's RGBA upscaled (premultiplied, so no colour from invisible pixels bleeds in) to the
size rounded to multiples of 64, then img2img at `hires_strength`. The image is upscaled rather than the
latent: re-encoding gives a transparency offset made for the new size, an interpolated latent does not.

Conventions as `generation.generate_rgba`: a batch's rows share width, height, steps and guidance; each
row's noise comes from its own CPU generator seeded with `row.seed`, so its image does not depend on its
batch-mates; `tta` and `decoder_sub_batch` are the transparent decoder's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .decoder import to_rgba_uint8
from .encoder import encode_rgba
from .generation import SHARED_FIELDS, default_sub_batch, generate_rgba, vae_decode
from .loading import LayerDiffuseModel

SIZE_STEP = 64  # the transparent decoder needs multiples of 64


def img2img_rgba(
    model: LayerDiffuseModel,
    rows: Sequence,
    images: np.ndarray,
    strengths: Sequence[float],
    tta: bool = True,
    decoder_sub_batch: int | None = None,
) -> np.ndarray:
    """uint8 [B, H, W, 4] straight RGBA: `images` (uint8 [B, H, W, 4], H and W the rows' height and width,
    multiples of 64) re-imagined by the rows' prompts; `strengths[i]` in [0, 1] for row i (0 = the input
    through the encoder and decoders only, 1 = from pure noise). The model needs load_model(..., encoder=True)."""
    return to_rgba_uint8(img2img_decoded(model, rows, images, strengths, tta, decoder_sub_batch))


@torch.inference_mode()
def img2img_decoded(
    model: LayerDiffuseModel,
    rows: Sequence,
    images: np.ndarray,
    strengths: Sequence[float],
    tta: bool = True,
    decoder_sub_batch: int | None = None,
) -> torch.Tensor:
    """The transparent decoder's output [B, 4, H, W] in [0, 1] (channel 0 alpha); see `img2img_rgba`."""
    check_img2img(model, rows, images, strengths)
    latent = encode_rgba(model.pipe.vae, model.encoder, images).to(model.device)
    result = latent.clone()
    for strength in sorted(set(strengths)):  # one sampler run per distinct strength in the batch
        index = [i for i, s in enumerate(strengths) if s == strength]
        result[index] = renoise_denoise(model, [rows[i] for i in index], latent[index], strength).float()
    pixels01 = vae_decode(model, result)
    sub_batch = decoder_sub_batch or default_sub_batch(model.device)
    return model.decoder.decode(pixels01, result, augment=tta, sub_batch=sub_batch)


def check_img2img(model: LayerDiffuseModel, rows: Sequence, images: np.ndarray, strengths: Sequence[float]) -> None:
    """ValueErrors for what a caller can get wrong (a run loop reports them per batch or row)."""
    if model.encoder is None:
        raise ValueError("img2img needs the transparent encoder: load_model(..., encoder=True)")
    first = rows[0]
    mismatched = [f for f in SHARED_FIELDS if any(getattr(row, f) != getattr(first, f) for row in rows)]
    if mismatched:
        raise ValueError(f"rows of one batch must share {SHARED_FIELDS}; differing: {mismatched}")
    expected = (len(rows), first.height, first.width, 4)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape != expected:
        got = f"{getattr(images, 'dtype', type(images).__name__)} {list(getattr(images, 'shape', []))}"
        raise ValueError(f"input images must be uint8 RGBA {list(expected)} (the rows' size), got {got}")
    if len(strengths) != len(rows) or not all(0.0 <= s <= 1.0 for s in strengths):
        raise ValueError(f"need one strength in [0, 1] per row, got {list(strengths)}")


@torch.inference_mode()
def renoise_denoise(model: LayerDiffuseModel, rows: Sequence, latent: torch.Tensor, strength: float) -> torch.Tensor:
    """Unscaled latent -> noised to `strength` -> denoised; unscaled latent back. Fewer than one step
    (strength * steps < 1) returns `latent` unchanged, as diffusers would refuse to run zero steps."""
    first = rows[0]
    if int(first.num_inference_steps * strength) == 0:
        return latent
    pipe = _img2img_pipeline(model)
    scaling = pipe.vae.config.scaling_factor
    generators = [torch.Generator("cpu").manual_seed(row.seed) for row in rows]
    sampled = pipe(
        prompt=[row.prompt for row in rows],
        negative_prompt=[row.negative_prompt for row in rows],
        image=(latent * scaling).to(model.pipe.unet.dtype),  # 4 channels: taken as latents, not encoded again
        strength=strength,
        num_inference_steps=first.num_inference_steps,
        guidance_scale=first.guidance_scale,
        generator=generators,
        output_type="latent",
    ).images
    return sampled / scaling


def _img2img_pipeline(model: LayerDiffuseModel):
    """An SDXL img2img pipeline around the loaded components (nothing is copied)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline(
        **model.pipe.components,
        force_zeros_for_empty_prompt=model.pipe.config.force_zeros_for_empty_prompt,
        add_watermarker=False,
    )
    pipe.watermark = None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) times `scale`, each rounded to the nearest multiple of 64 (at least 64): 1024 x 1.5 = 1536."""
    return tuple(max(SIZE_STEP, round(n * scale / SIZE_STEP) * SIZE_STEP) for n in (width, height))


def resize_rgba(images: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [B, H, W, 4] -> [B, height, width, 4]: bicubic (antialiased when shrinking) on premultiplied
    colour, then un-premultiplied and rounded; colour under alpha 0 becomes black."""
    rgba = torch.from_numpy(images.astype(np.float32) / 255.0).movedim(-1, 1)
    premultiplied = torch.cat([rgba[:, :3] * rgba[:, 3:], rgba[:, 3:]], dim=1)
    resized = torch.nn.functional.interpolate(
        premultiplied, size=(height, width), mode="bicubic", align_corners=False, antialias=True
    ).clip(0, 1)
    alpha = resized[:, 3:]
    colour = torch.minimum(resized[:, :3], alpha)  # premultiplied colour cannot exceed alpha (bicubic overshoots)
    rgb = torch.where(alpha > 0, colour / alpha.clamp_min(1e-6), 0.0)
    out = torch.cat([rgb, alpha], dim=1).movedim(1, -1).numpy()
    return np.round(out * 255.0).astype(np.uint8)


class _Resized:
    """A row seen at another size (the hires pass); every other field is the row's own."""

    def __init__(self, row, width: int, height: int):
        self._row, self.width, self.height = row, width, height

    def __getattr__(self, name: str):
        return getattr(self._row, name)


def hires_rgba(
    model: LayerDiffuseModel,
    rows: Sequence,
    images: np.ndarray,
    scale: float,
    strengths: Sequence[float],
    tta: bool = True,
    decoder_sub_batch: int | None = None,
) -> np.ndarray:
    """Second pass: `images` (uint8 [B, H, W, 4] at the rows' size, e.g. from `generate_rgba`) upscaled by
    `scale` (`hires_size`) and re-done by img2img at `strengths[i]` (hires_strength; 0.3-0.5 keeps the
    composition). Returns uint8 [B, H', W', 4]. Needs load_model(..., encoder=True)."""
    width, height = hires_size(rows[0].width, rows[0].height, scale)
    larger = [_Resized(row, width, height) for row in rows]
    return img2img_rgba(model, larger, resize_rgba(images, width, height), strengths, tta, decoder_sub_batch)


def generate_hires_rgba(
    model: LayerDiffuseModel,
    rows: Sequence,
    scale: float,
    strengths: Sequence[float],
    tta: bool = True,
    decoder_sub_batch: int | None = None,
) -> np.ndarray:
    """Text-to-image at the rows' size, then `hires_rgba`: the `--hires-scale` / `--hires-strength` path."""
    base = generate_rgba(model, rows, tta, decoder_sub_batch)
    return hires_rgba(model, rows, base, scale, strengths, tta, decoder_sub_batch)
