"""A diffusers SDXL pipeline as one single-file checkpoint in the original (SGM / LDM) layout.

That is the layout of `sd_xl_base_1.0.safetensors` and of the fine-tunes AUTOMATIC1111, ComfyUI and
Civitai share:
    model.diffusion_model.*                 UNet, SGM names (keys.py)
    first_stage_model.*                     VAE, LDM names (`encoder.down.0.block.0...`, 1x1-conv attention)
    conditioner.embedders.0.transformer.*   CLIP ViT-L text encoder, Hugging Face names under `text_model.`
    conditioner.embedders.1.model.*         OpenCLIP ViT-bigG text encoder, OpenCLIP names
                                            (fused `attn.in_proj_*`, `text_projection` as [width, dim])
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .keys import sgm_key_map

if TYPE_CHECKING:
    import torch

UNET_PREFIX = "model."  # + keys.py's `diffusion_model.` names
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."
_VAE_RESNET = re.compile(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)")
_VAE_SAMPLER = re.compile(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.(.*)")
_VAE_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)")
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}  # fmt: skip


def single_file_state_dict(pipe) -> dict[str, torch.Tensor]:
    """Every weight of `pipe` (UNet, VAE, both text encoders) under its single-file name."""
    out = {}
    unet = pipe.unet.state_dict()
    out.update({UNET_PREFIX + sgm: unet[key] for sgm, key in sgm_key_map(unet).items()})
    out.update(ldm_vae_state_dict(pipe.vae.state_dict(), len(pipe.vae.config.up_block_types)))
    out.update(clip_l_state_dict(pipe.text_encoder.state_dict()))
    out.update(openclip_state_dict(pipe.text_encoder_2.state_dict()))
    return {k: v.contiguous() for k, v in out.items()}


def ldm_vae_state_dict(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        name = ldm_vae_key(key, levels)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out[VAE_PREFIX + name] = value
    return out


def ldm_vae_key(key: str, levels: int) -> str:
    """LDM name of a diffusers AutoencoderKL key; the decoder's up blocks are numbered in reverse."""
    if m := _VAE_RESNET.fullmatch(key):
        part, side, i, j, rest = m.groups()
        level = int(i) if side == "down" else levels - 1 - int(i)
        return f"{part}.{side}.{level}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
    if m := _VAE_SAMPLER.fullmatch(key):
        part, side, i, kind, rest = m.groups()
        level = int(i) if side == "down" else levels - 1 - int(i)
        return f"{part}.{side}.{level}.{kind}sample.{rest}"
    if m := _VAE_MID.fullmatch(key):
        part, kind, j, rest = m.groups()
        if kind == "resnets":
            return f"{part}.mid.block_{int(j) + 1}.{rest}"
        module, _, tail = rest.rpartition(".")
        return f"{part}.mid.attn_1.{_VAE_ATTENTION[module]}.{tail}"
    return key.replace("conv_norm_out", "norm_out")  # conv_in, conv_out, (post_)quant_conv keep their names


def clip_l_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face CLIP names, always under `text_model.` (newer transformers drop it for CLIPTextModel)."""
    return {CLIP_L_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def openclip_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP names of a CLIPTextModelWithProjection's weights."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T,  # OpenCLIP applies x @ P
    }
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        out.update(_openclip_layer(state, i))
    leftover = [k for k in state if not k.startswith("encoder.layers.") and k != "embeddings.position_ids"]
    if leftover:
        raise KeyError(f"no OpenCLIP name for text encoder weights {leftover}")
    return {CLIP_G_PREFIX + k: v for k, v in out.items()}


def _openclip_layer(state: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    import torch

    ours, theirs = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
    out = {}
    for kind in ("weight", "bias"):
        qkv = [state[f"{ours}self_attn.{p}_proj.{kind}"] for p in "qkv"]
        out[f"{theirs}attn.in_proj_{kind}"] = torch.cat(qkv)
        for hf, openclip in _OPENCLIP_LAYER.items():
            out[f"{theirs}{openclip}.{kind}"] = state[f"{ours}{hf}.{kind}"]
    return out
