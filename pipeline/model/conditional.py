"""The conditional SDXL layer models (SPEC §2, docs/layerdiffuse.md §9): generate one layer given others.

| mode     | file                         | condition latents (in this order) | output                       |
|----------|------------------------------|-----------------------------------|------------------------------|
| fg2blend | layer_xl_fg2ble.safetensors  | foreground                        | blended image, RGB           |
| bg2blend | layer_xl_bg2ble.safetensors  | background                        | blended image, RGB           |
| blend2bg | layer_xl_fgble2bg.safetensors| foreground, blend                 | background, RGB              |
| blend2fg | layer_xl_bgble2fg.safetensors| background, blend                 | foreground, RGBA (decoder)   |

Each file is a Forge "diff" file (`diffusion_model.<SGM key>::diff::0`, or diffusers keys) for the *base* SDXL
UNet, not for the transparent one; its `conv_in` delta is wider than the UNet's (4 + 4 per condition input
channels). As Forge and ComfyUI do, the base `conv_in` is zero-padded to that width and the delta added.
At every UNet call the condition latents are concatenated after the (scheduler-scaled) sample, as ComfyUI's
`c_concat`. A condition image is flattened onto mid-grey (0.5 + (rgb - 0.5) * alpha, Forge's `rgba2rgbfp32`),
encoded by the SDXL VAE (posterior mean, as rootonchair) and multiplied by the VAE scaling factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .conditional_unet import conditioned
from .decoder import _to_uint8, to_rgba_uint8
from .generation import default_sub_batch, denoise, generate_rgba, vae_decode
from .loading import LayerDiffuseModel

CONDITIONS = {
    "fg2blend": ("foreground",),
    "bg2blend": ("background",),
    "blend2bg": ("foreground", "blend"),
    "blend2fg": ("background", "blend"),
}
TRANSPARENT_MODES = ("fg", "blend2fg")  # RGBA through the transparent decoder; the others are RGB


@torch.inference_mode()
def condition_latents(model: LayerDiffuseModel, images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 [B, H, W, 3 or 4] images -> their scaled latents, concatenated along channels in the given order."""
    vae = model.pipe.vae
    latents = []
    for image in images:
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).movedim(-1, 1)
        if pixels.shape[1] == 4:  # flattened onto mid-grey, as Forge's rgba2rgbfp32
            pixels = 0.5 + (pixels[:, :3] - 0.5) * pixels[:, 3:]
        mean = vae.encode((pixels * 2 - 1).to(device=model.device, dtype=vae.dtype)).latent_dist.mean
        latents.append(mean.float() * vae.config.scaling_factor)
    return torch.cat(latents, dim=1)


@torch.inference_mode()
def conditional_latent(
    model: LayerDiffuseModel, mode: str, rows: Sequence, conditions: Mapping[str, np.ndarray]
) -> torch.Tensor:
    """Sample with the `mode` layer model; returns the unscaled latent. Seeds and batching as `denoise`."""
    unet = conditional_unet(model, mode)
    images = [check_condition(conditions, name, rows) for name in CONDITIONS[mode]]
    condition = condition_latents(model, images)
    with conditioned(unet, condition.to(unet.dtype)):
        return denoise(model, rows, pipe=_pipeline_with(model, unet))


def conditional_unet(model: LayerDiffuseModel, mode: str) -> nn.Module:
    if mode not in CONDITIONS:
        raise ValueError(f"unknown conditional mode {mode!r}; expected one of {', '.join(CONDITIONS)}")
    if mode not in model.conditional:
        raise ValueError(f"the {mode} layer model is not loaded: load_model(..., modes=({mode!r},))")
    return model.conditional[mode]


def check_condition(conditions: Mapping[str, np.ndarray], name: str, rows: Sequence) -> np.ndarray:
    """The `name` images as uint8 [B, H, W, 3|4] at the rows' size, or a ValueError saying what is wrong."""
    if name not in conditions or conditions[name] is None:
        raise ValueError(f"this mode needs a {name} image")
    image = np.asarray(conditions[name])
    expected = (len(rows), rows[0].height, rows[0].width)
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[:3] != expected or image.shape[3] not in (3, 4):
        raise ValueError(f"{name} images must be uint8 {[*expected, '3|4']}, got {image.dtype} {list(image.shape)}")
    return image


def _pipeline_with(model: LayerDiffuseModel, unet: nn.Module):
    """The loaded pipeline's components around another UNet (nothing is copied)."""
    pipe = type(model.pipe)(
        **{**model.pipe.components, "unet": unet},
        force_zeros_for_empty_prompt=model.pipe.config.force_zeros_for_empty_prompt,
        add_watermarker=False,
    )
    pipe.watermark = None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def layer_images(
    model: LayerDiffuseModel,
    mode: str,
    rows: Sequence,
    conditions: Mapping[str, np.ndarray] | None = None,
    tta: bool = True,
    decoder_sub_batch: int | None = None,
) -> np.ndarray:
    """One batch of rows in a layer mode: uint8 [B, H, W, 4] straight RGBA for "fg" and "blend2fg",
    uint8 [B, H, W, 3] RGB for "fg2blend", "bg2blend" and "blend2bg" (CONDITIONS says which images each needs)."""
    if mode == "fg":
        return generate_rgba(model, rows, tta, decoder_sub_batch)
    latent = conditional_latent(model, mode, rows, conditions or {})
    pixels01 = vae_decode(model, latent)
    if mode not in TRANSPARENT_MODES:
        return _to_uint8(pixels01.movedim(1, -1))  # truncated, like every PNG of this pipeline
    sub_batch = decoder_sub_batch or default_sub_batch(model.device)
    return to_rgba_uint8(model.decoder.decode(pixels01, latent, augment=tta, sub_batch=sub_batch))


@dataclass
class Layers:
    foreground: np.ndarray  # uint8 [B, H, W, 4], straight alpha
    blend: np.ndarray  # uint8 [B, H, W, 3]
    background: np.ndarray | None  # uint8 [B, H, W, 3 or 4]; None when not asked for


def layers(
    model: LayerDiffuseModel,
    rows: Sequence,
    background: np.ndarray | None = None,
    with_background: bool = True,
    tta: bool = True,
    decoder_sub_batch: int | None = None,
) -> Layers:
    """A layered triplet per row. Without `background`: fg -> fg2blend (-> blend2bg when `with_background`);
    with it: bg2blend -> blend2fg. Every step uses the row's own seed."""
    run = dict(tta=tta, decoder_sub_batch=decoder_sub_batch)
    if background is None:
        foreground = layer_images(model, "fg", rows, **run)
        blend = layer_images(model, "fg2blend", rows, {"foreground": foreground}, **run)
        if with_background:
            background = layer_images(model, "blend2bg", rows, {"foreground": foreground, "blend": blend}, **run)
        return Layers(foreground, blend, background)
    blend = layer_images(model, "bg2blend", rows, {"background": background}, **run)
    foreground = layer_images(model, "blend2fg", rows, {"background": background, "blend": blend}, **run)
    return Layers(foreground, blend, background)


def side_by_side(layers: Layers) -> np.ndarray:
    """uint8 [B, H, 3W, 4]: foreground, blend, background (opaque where RGB; black when absent)."""

    def opaque(image: np.ndarray | None) -> np.ndarray:
        if image is None:
            return np.zeros_like(layers.foreground)
        if image.shape[-1] == 4:
            return image
        return np.concatenate([image, np.full(image.shape[:-1] + (1,), 255, np.uint8)], axis=-1)

    return np.concatenate([layers.foreground, opaque(layers.blend), opaque(layers.background)], axis=2)
