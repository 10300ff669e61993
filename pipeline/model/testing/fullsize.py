"""The full-size SDXL + LayerDiffuse architectures with random weights, for GPU smoke tests and benchmarks.

Timing and memory do not depend on weight values, so no download is needed. The tokenizers are the
tiny byte-level ones; they emit ids inside the real vocabulary (`SDXL_UNET` is the full UNet config).
"""

from __future__ import annotations

import torch

from ..decoder import TransparentVAEDecoder
from ..loading import LayerDiffuseModel
from .sdxl import UNET_LAYOUT, random_sdxl_pipeline

SDXL_UNET = dict(
    **UNET_LAYOUT,
    sample_size=128,
    block_out_channels=(320, 640, 1280),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=1024, force_upcast=True)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              projection_dim=768, hidden_act="quick_gelu", vocab_size=49408)  # fmt: skip
CLIP_BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                  projection_dim=1280, hidden_act="gelu", vocab_size=49408)  # fmt: skip


def random_fullsize_model(device: torch.device, dtype: torch.dtype) -> LayerDiffuseModel:
    torch.manual_seed(0)
    sizes = {k: v for k, v in SDXL_UNET.items() if k not in UNET_LAYOUT}
    with torch.device(device):
        pipe = random_sdxl_pipeline(sizes, SDXL_VAE, CLIP_L, CLIP_BIG_G)
        decoder = TransparentVAEDecoder()
    pipe.to(dtype=dtype)
    pipe.vae.to(torch.float32 if dtype == torch.float16 else dtype)
    pipe.set_progress_bar_config(disable=True)
    decoder.to(dtype=dtype).eval()
    return LayerDiffuseModel(pipe=pipe, decoder=decoder, device=device, dtype=dtype, identity={"base": "random"})
