"""Helpers for the model-file tests: small requests, and synthetic safetensors files with chosen names/shapes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file


@dataclass
class Req:
    prompt: str
    seed: int
    negative_prompt: str = "text, watermark"
    width: int = 64
    height: int = 64
    num_inference_steps: int = 2
    guidance_scale: float = 8.0


ROWS = [Req("a glass bottle", 1), Req("smoke", 2)]


def write_tensors(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict | None = None) -> Path:
    """A valid safetensors file whose tensors (zeros, fp16) have the given names and shapes."""
    save_file({name: torch.zeros(shape, dtype=torch.float16) for name, shape in shapes.items()}, path, metadata)
    return path


UNET = "model.diffusion_model."
# Names and the shapes that matter, as each family's published checkpoints have them (shrunk elsewhere).
SD1 = {
    UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 8),
    "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3),
}
SD2 = {
    UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    "cond_stage_model.model.token_embedding.weight": (16, 8),
    "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3),
}
SD3 = {UNET + "joint_blocks.0.context_block.adaLN_modulation.1.bias": (8,), "text_encoders.clip_l.x": (2,)}
FLUX = {"double_blocks.0.img_attn.norm.key_norm.scale": (8,), "single_blocks.0.linear1.weight": (8, 8)}
SDXL_PARTS = {
    UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
    UNET + "label_emb.0.0.weight": (8, 2816),
    UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
}
SDXL_REFINER = {**SDXL_PARTS, "conditioner.embedders.0.model.text_projection": (8, 8),
                "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3)}  # fmt: skip
SDXL_INPAINT = {**SDXL_PARTS, UNET + "input_blocks.0.0.weight": (320, 9, 3, 3)}
KOHYA_LORA = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (4, 8),
              "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": (8, 4)}  # fmt: skip
VAE_ONLY = {"encoder.down.0.block.0.norm1.weight": (8,), "decoder.up.0.block.0.norm1.weight": (8,)}
LAYERDIFFUSE_PATCH = {"diffusion_model.input_blocks.4.1.proj_in.weight::lora::0": (8, 4)}
