"""Small seeded random LoRAs for an SDXL pipeline, written in the two formats users download.

- kohya / AUTOMATIC1111: `lora_unet_<SGM name with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
  `lora_te1_…` (CLIP ViT-L), `lora_te2_…` (OpenCLIP bigG);
- diffusers / PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight`, `text_encoder.…`, `text_encoder_2.…`.
The same seed gives the same low-rank factors in both, so both must give the same images. Targets: every
attention projection and the first convolution of every resnet in the UNet (a conv LoRA, as LoCon has),
and the attention projections of both text encoders.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..keys import sgm_key_map

FORMATS = ("kohya", "peft")
_UNET_TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0", ".conv1")
_TEXT_TARGETS = (".q_proj", ".k_proj", ".v_proj", ".out_proj")


def build_tiny_lora(
    pipe, path: str | os.PathLike, fmt: str = "kohya", seed: int = 0, rank: int = 4, alpha: float | None = None
) -> Path:
    """Write a random LoRA for `pipe` to `path`. kohya stores `alpha` (default: the rank, scale 1); PEFT files
    have no alpha, so their up factors carry the scale alpha / rank instead (exact for powers of two)."""
    if fmt not in FORMATS:
        raise ValueError(f"LoRA format must be one of {FORMATS}, got {fmt!r}")
    alpha = float(rank if alpha is None else alpha)
    generator = torch.Generator().manual_seed(seed)
    sgm_names = {d: s for s, d in sgm_key_map(k for k, _ in pipe.unet.named_parameters()).items()}
    state: dict[str, torch.Tensor] = {}
    for component, name, module in lora_targets(pipe):
        down, up = _factors(module, rank, generator)
        if fmt == "kohya":
            key = kohya_name(component, name, sgm_names)
            state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up})
            state[f"{key}.alpha"] = torch.tensor(alpha)
        else:
            state.update(
                {f"{component}.{name}.lora_A.weight": down, f"{component}.{name}.lora_B.weight": up * (alpha / rank)}
            )
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return Path(path)


def lora_targets(pipe):
    """(component, module name, module) for every targeted layer, in a fixed order."""
    for component, suffixes in (
        ("unet", _UNET_TARGETS),
        ("text_encoder", _TEXT_TARGETS),
        ("text_encoder_2", _TEXT_TARGETS),
    ):
        for name, module in getattr(pipe, component).named_modules():
            name = name.removesuffix(".base_layer")  # a layer that already carries adapters
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.endswith(suffixes):
                yield component, _text_model_name(component, name), module


def kohya_name(component: str, name: str, sgm_names: dict[str, str]) -> str:
    """kohya's module name: SGM names for the UNet (as sd-scripts trains SDXL), dots as underscores.
    `sgm_names`: {diffusers parameter name: SGM name} of the UNet."""
    if component == "unet":
        name = sgm_names[f"{name}.weight"].removeprefix("diffusion_model.").removesuffix(".weight")
        return "lora_unet_" + name.replace(".", "_")
    prefix = "lora_te1_" if component == "text_encoder" else "lora_te2_"
    return prefix + name.replace(".", "_")


def _text_model_name(component: str, name: str) -> str:
    """Text encoder names under `text_model.`, as published files have them (newer transformers drop it)."""
    if component != "unet" and not name.startswith("text_model."):
        return "text_model." + name
    return name


def _factors(module, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(module, torch.nn.Conv2d):
        down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=generator) * 0.1
        up = torch.randn(module.out_channels, rank, 1, 1, generator=generator) * 0.1
    else:
        down = torch.randn(rank, module.in_features, generator=generator) * 0.1
        up = torch.randn(module.out_features, rank, generator=generator) * 0.1
    return down, up
