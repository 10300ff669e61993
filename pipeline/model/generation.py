"""One batch of rows -> RGBA images: SDXL denoising, VAE decode, transparent decode (SPEC §1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .decoder import to_rgba_uint8
from .loading import LayerDiffuseModel

SHARED_FIELDS = ("width", "height", "num_inference_steps", "guidance_scale")


def generate_rgba(
    model: LayerDiffuseModel, rows: Sequence, tta: bool = True, decoder_sub_batch: int = 16
) -> np.ndarray:
    """RGBA uint8 [B, H, W, 4] (straight alpha) for rows that share width, height, steps and guidance."""
    return to_rgba_uint8(generate_decoded(model, rows, tta, decoder_sub_batch))


@torch.inference_mode()
def generate_decoded(
    model: LayerDiffuseModel, rows: Sequence, tta: bool = True, decoder_sub_batch: int = 16
) -> torch.Tensor:
    """The transparent decoder's output [B, 4, H, W] in [0, 1], channel 0 alpha.

    A row needs `prompt`, `negative_prompt`, `seed` and the shared fields. Each row's initial noise
    comes from its own CPU generator, so its image does not depend on its batch-mates' seeds.
    """
    # 1. check inputs
    first = rows[0]
    for row in rows:
        mismatched = [f for f in SHARED_FIELDS if getattr(row, f) != getattr(first, f)]
        if mismatched:
            raise ValueError(f"rows of one batch must share {SHARED_FIELDS}; differing: {mismatched}")
    # 2. per-row seeded noise
    generators = [torch.Generator("cpu").manual_seed(row.seed) for row in rows]
    latents = initial_latents(model, first.width, first.height, generators)
    # 3. denoise
    pipe = model.pipe
    sampled = pipe(
        prompt=[row.prompt for row in rows],
        negative_prompt=[row.negative_prompt for row in rows],
        width=first.width,
        height=first.height,
        num_inference_steps=first.num_inference_steps,
        guidance_scale=first.guidance_scale,
        latents=latents,
        generator=generators,  # ancestral samplers draw their per-step noise per row too
        output_type="latent",
    ).images
    # 4. normal VAE decode of the unscaled latent, then the transparent decoder on both
    latent = sampled / pipe.vae.config.scaling_factor
    pixels = pipe.vae.decode(latent.to(pipe.vae.dtype)).sample
    pixels01 = (pixels.float() * 0.5 + 0.5).clip(0, 1)
    return model.decoder.decode(pixels01, latent, augment=tta, sub_batch=decoder_sub_batch)


def initial_latents(model: LayerDiffuseModel, width: int, height: int, generators) -> torch.Tensor:
    shape = (model.pipe.unet.config.in_channels, height // 8, width // 8)
    noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(noise).to(device=model.device, dtype=model.pipe.unet.dtype)


def free_memory(model: LayerDiffuseModel) -> None:
    """After a failed batch (often out of memory), give cached GPU memory back before retrying."""
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
