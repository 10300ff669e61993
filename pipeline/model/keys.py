"""Diffusers <-> SGM ("LDM") names of the SDXL UNet's parameters (docs/layerdiffuse.md §2.1)."""

from __future__ import annotations

import re

SGM_PREFIX = "diffusion_model."
RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
LAYERS_PER_BLOCK = 2  # SDXL; the SGM index arithmetic below depends on it
_BLOCK = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)")
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)")


def diffusers_to_sgm(key: str, up_blocks_with_attention: frozenset[int] = frozenset({0, 1})) -> str:
    """SGM name (with the `diffusion_model.` prefix) of a diffusers SDXL UNet state-dict key."""
    for name, sgm in TOP_LEVEL.items():
        if key.startswith(name + "."):
            return SGM_PREFIX + sgm + key[len(name) :]
    if m := _MID.fullmatch(key):
        kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
        index = 1 if kind == "attentions" else 2 * j
        return f"{SGM_PREFIX}middle_block.{index}.{_inner(kind, rest)}"
    if m := _BLOCK.fullmatch(key):
        side, i, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        return SGM_PREFIX + _block_path(side, i, kind, j, up_blocks_with_attention) + "." + _inner(kind, rest)
    raise KeyError(f"{key!r} is not a parameter name of an SDXL-layout UNet")


def _block_path(side: str, i: int, kind: str, j: int, up_blocks_with_attention: frozenset[int]) -> str:
    stride = LAYERS_PER_BLOCK + 1
    if side == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{stride * i + stride}.0"
        return f"input_blocks.{stride * i + j + 1}.{0 if kind == 'resnets' else 1}"
    if kind == "upsamplers":
        return f"output_blocks.{stride * i + 2}.{2 if i in up_blocks_with_attention else 1}"
    return f"output_blocks.{stride * i + j}.{0 if kind == 'resnets' else 1}"


def _inner(kind: str, rest: str) -> str:
    if kind == "resnets":
        part, _, tail = rest.partition(".")
        return f"{RESNET_PARTS.get(part, part)}.{tail}"
    if kind == "downsamplers":
        return rest.replace("conv.", "op.", 1)
    return rest


def sgm_key_map(diffusers_keys) -> dict[str, str]:
    """{SGM key: diffusers key} for every given diffusers key."""
    keys = list(diffusers_keys)
    with_attention = frozenset(int(k.split(".")[1]) for k in keys if k.startswith("up_blocks.") and ".attentions." in k)
    return {diffusers_to_sgm(k, with_attention): k for k in keys}
