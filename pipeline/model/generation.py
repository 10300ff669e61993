"""One batch of rows -> RGBA images: SDXL denoising, VAE decode, transparent decode (docs/layerdiffuse.md §6)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .decoder import to_rgba_uint8
from .loading import LayerDiffuseModel

SHARED_FIELDS = ("width", "height", "num_inference_steps", "guidance_scale")


def generate_rgba(
    model: LayerDiffuseModel, rows: Sequence, tta: bool = True, decoder_sub_batch: int | None = None
) -> np.ndarray:
    """RGBA uint8 [B, H, W, 4] (straight alpha) for rows that share width, height, steps and guidance."""
    return to_rgba_uint8(generate_decoded(model, rows, tta, decoder_sub_batch))


@torch.inference_mode()
def generate_decoded(
    model: LayerDiffuseModel, rows: Sequence, tta: bool = True, decoder_sub_batch: int | None = None
) -> torch.Tensor:
    """The transparent decoder's output [B, 4, H, W] in [0, 1], channel 0 alpha.

    `decoder_sub_batch`: images per decoder call (the 8 TTA views of each image count); None picks
    by device (see `default_sub_batch`).

    A row needs `prompt`, `negative_prompt`, `seed` and the shared fields. Each row's initial noise
    comes from its own CPU generator, so its image does not depend on its batch-mates' seeds.
    """
    latent = denoise(model, rows)
    pixels01 = vae_decode(model, latent)
    sub_batch = decoder_sub_batch or default_sub_batch(model.device)
    return model.decoder.decode(pixels01, latent, augment=tta, sub_batch=sub_batch)


def default_sub_batch(device: torch.device) -> int:
    """Batched TTA views pay off on a GPU; on a CPU one view at a time measured faster (larger
    batches of full-resolution activations fall out of cache; tests/bench/RESULTS.md)."""
    return 16 if device.type == "cuda" else 1


@torch.inference_mode()
def denoise(model: LayerDiffuseModel, rows: Sequence, pipe=None) -> torch.Tensor:
    """SDXL sampling in LayerDiffuse's latent space; returns the unscaled latent (what the VAE decodes).

    `pipe`: another pipeline around the same components (a conditional layer model's UNet); default the model's.
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
    # 3. denoise (classifier-free guidance runs as one batched UNet call per step)
    pipe = pipe or model.pipe
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
    return sampled / pipe.vae.config.scaling_factor


@torch.inference_mode()
def vae_decode(model: LayerDiffuseModel, latent: torch.Tensor) -> torch.Tensor:
    """The normal SDXL VAE decode mapped to [0, 1] and clipped: the transparent decoder's pixel input."""
    vae = model.pipe.vae
    pixels = vae.decode(latent.to(vae.dtype)).sample
    return (pixels.float() * 0.5 + 0.5).clip(0, 1)


def initial_latents(model: LayerDiffuseModel, width: int, height: int, generators) -> torch.Tensor:
    shape = (model.pipe.unet.config.in_channels, height // 8, width // 8)
    noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(noise).to(device=model.device, dtype=model.pipe.unet.dtype)


def free_memory(model: LayerDiffuseModel) -> None:
    """After a failed batch (often out of memory), give cached GPU memory back before retrying."""
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
