"""The safety checker the hosted API runs by default (`enable_safety_checker`), on transparent images.

SDXL pipelines have none, so this uses diffusers' `StableDiffusionSafetyChecker` (CompVis weights by
default) with its CLIP image processor. A transparent image is judged as its colours composited over
mid-grey: the checker was trained on opaque pictures, and a neutral grey keeps both dark and light
subjects visible (black or white would hide one of them). It is also the grey LayerDiffuse itself
flattens transparent images onto.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

NEUTRAL_GREY = 127


@dataclass
class SafetyChecker:
    model: object  # diffusers StableDiffusionSafetyChecker
    processor: object  # transformers CLIPImageProcessor
    device: torch.device
    dtype: torch.dtype

    @torch.inference_mode()
    def flags(self, rgba: np.ndarray) -> list[bool]:
        """One flag per image of uint8 [B, H, W, 4] (or RGB): True where the checker sees NSFW concepts."""
        if len(rgba) == 0:
            return []
        pixels = self.processor(images=list(composite_on_grey(rgba)), return_tensors="pt").pixel_values
        clip_input = pixels.to(device=self.device, dtype=self.dtype)
        _, flagged = self.model(clip_input=clip_input, images=np.zeros((len(rgba), 1, 1, 3)))
        return [bool(f) for f in flagged]


def screen(checker: SafetyChecker | None, rows, rgba: np.ndarray) -> tuple[np.ndarray, list[bool | None]]:
    """Check the rows that ask for it; flagged images become fully transparent (same size).

    Returns the images and one flag per row: True/False where checked, None where the row opted out.
    """
    wanted = [i for i, row in enumerate(rows) if row.enable_safety_checker]
    flags: list[bool | None] = [None] * len(rows)
    if not wanted:
        return rgba, flags
    if checker is None:
        raise RuntimeError("rows ask for the safety checker, but none was loaded")
    rgba = rgba.copy()
    for i, flagged in zip(wanted, checker.flags(rgba[wanted]), strict=True):
        flags[i] = flagged
        if flagged:
            rgba[i] = 0
    return rgba, flags


def composite_on_grey(rgba: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 4] straight alpha -> uint8 [B, H, W, 3] over RGB (127, 127, 127): each channel
    round((c * a + 127 * (255 - a)) / 255), in 16-bit integers (exact, and faster than floats). RGB images
    (the layer modes' blends and backgrounds) are returned as they are."""
    if rgba.shape[-1] == 3:
        return rgba
    alpha = rgba[..., 3:].astype(np.uint16)
    total = rgba[..., :3] * alpha  # at most 255 * 255: with the grey and the rounding term it fits 16 bits
    total += NEUTRAL_GREY * (255 - alpha) + 127  # + 127: rounds (a multiple of 255 plus a half never occurs)
    total //= 255
    return total.astype(np.uint8)


def load_safety_checker(source: str | os.PathLike, device: torch.device, dtype: torch.dtype) -> SafetyChecker:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    model = StableDiffusionSafetyChecker.from_pretrained(str(source), dtype=dtype, use_safetensors=True)
    processor = CLIPImageProcessor.from_pretrained(str(source))
    return SafetyChecker(model.to(device).eval(), processor, device, dtype)


def build_tiny_safety_checker(folder: str | os.PathLike, flag_everything: bool = False, seed: int = 0) -> Path:
    """A tiny random checker in the real on-disk format (config, preprocessor config, safetensors).

    Its concept thresholds make it flag every image (`flag_everything`) or none, so tests can tell.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1},
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },  # fmt: skip
        projection_dim=8,
    )
    checker = StableDiffusionSafetyChecker(config)
    threshold = -2.0 if flag_everything else 2.0  # cosine similarities lie in [-1, 1]
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    folder = Path(folder)
    checker.save_pretrained(folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
