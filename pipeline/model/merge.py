"""Merging LayerDiffuse UNet weights into a diffusers SDXL UNet (docs/layerdiffuse.md §2).

Three released formats are accepted, told apart by their keys:
- Forge attention LoRA: `diffusion_model.<SGM key>::lora::0` (up) and `::lora::1` (down);
- Forge conv diff:      `diffusion_model.<SGM key>::diff::0` (a full-shape offset);
- DiffusersCLI offsets: plain diffusers UNet keys with full-shape offsets.
Every patched weight becomes cast(float32(W) + strength * float32(delta)), as Forge computes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from safetensors.torch import load_file

from .keys import sgm_key_map
from .sources import ModelLoadError


class WeightMergeError(ModelLoadError, ValueError):
    """A LayerDiffuse weight file does not fit the UNet it is merged into."""


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights come from safetensors only: pickled checkpoints can run code when loaded."""
    if not str(path).endswith(".safetensors"):
        raise WeightMergeError(f"{path}: only .safetensors weight files are accepted (pickled files can run code)")
    return load_file(str(path))


def layerdiffuse_deltas(unet_keys, weights: Mapping[str, torch.Tensor]) -> dict[str, object]:
    """{diffusers key: delta} where delta is a tensor or an (up, down) LoRA pair."""
    unet_keys = set(unet_keys)
    sgm_to_diffusers = sgm_key_map(unet_keys)
    deltas: dict[str, object] = {}
    lora: dict[str, dict[int, torch.Tensor]] = {}
    for key, tensor in weights.items():
        model_key, _, patch = key.partition("::")
        if not patch:
            target = model_key
        elif model_key in sgm_to_diffusers:
            target = sgm_to_diffusers[model_key]
        else:
            raise WeightMergeError(f"weight key {key!r}: {model_key!r} names no parameter of this UNet")
        if target not in unet_keys:
            raise WeightMergeError(f"weight key {key!r} names no parameter of this UNet")
        kind, _, index = patch.partition("::")
        if kind == "lora":
            lora.setdefault(target, {})[int(index)] = tensor
        elif kind in ("diff", ""):
            deltas[target] = tensor
        else:
            raise WeightMergeError(f"weight key {key!r}: unknown patch type {kind!r} (expected lora or diff)")
    for target, parts in lora.items():
        if set(parts) != {0, 1}:
            raise WeightMergeError(f"LoRA for {target!r} needs both ::lora::0 (up) and ::lora::1 (down)")
        deltas[target] = (parts[0], parts[1])
    return deltas


@torch.no_grad()
def merge_layerdiffuse_weights(
    unet: torch.nn.Module, weights: str | os.PathLike | Mapping[str, torch.Tensor], strength: float = 1.0
) -> list[str]:
    """Add LayerDiffuse offsets to `unet` in place; returns the diffusers keys that were patched."""
    if not isinstance(weights, Mapping):
        weights = load_safetensors(weights)
    params = dict(unet.named_parameters())
    deltas = layerdiffuse_deltas(params, weights)
    for target, delta in deltas.items():
        weight = params[target]
        offset = _as_offset(delta, target)
        if offset.shape != weight.shape:
            raise WeightMergeError(
                f"weight for {target!r} has shape {list(offset.shape)}, the UNet's is {list(weight.shape)}"
            )
        weight.copy_((weight.float() + strength * offset.to(weight.device)).to(weight.dtype))
    return sorted(deltas)


def _as_offset(delta, target: str) -> torch.Tensor:
    if isinstance(delta, torch.Tensor):
        return delta.float()
    up, down = (t.float().flatten(start_dim=1) for t in delta)
    if up.shape[1] != down.shape[0]:
        raise WeightMergeError(f"LoRA for {target!r}: up {list(up.shape)} and down {list(down.shape)} do not chain")
    return up @ down
