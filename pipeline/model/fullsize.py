"""The full-size SDXL + LayerDiffuse architectures with random weights, for GPU smoke tests and benchmarks.

Timing and memory do not depend on weight values, so no download is needed. The tokenizers are the
tiny byte-level ones; they emit ids inside the real vocabulary.
"""

from __future__ import annotations

import torch

from .decoder import TransparentVAEDecoder
from .loading import LayerDiffuseModel
from .tiny import tiny_tokenizer

SDXL_UNET = dict(
    sample_size=128,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              projection_dim=768, hidden_act="quick_gelu")  # fmt: skip
CLIP_BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                  projection_dim=1280, hidden_act="gelu")  # fmt: skip


def random_fullsize_model(device: torch.device, dtype: torch.dtype) -> LayerDiffuseModel:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    text = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    with torch.device(device):
        pipe = StableDiffusionXLPipeline(
            vae=AutoencoderKL(**SDXL_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L, **text)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G, **text)),
            tokenizer=tiny_tokenizer(),
            tokenizer_2=tiny_tokenizer(),
            unet=UNet2DConditionModel(**SDXL_UNET),
            scheduler=EulerDiscreteScheduler(
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                steps_offset=1,
                timestep_spacing="leading",
            ),  # fmt: skip
            add_watermarker=False,
        )
        decoder = TransparentVAEDecoder()
    pipe.to(dtype=dtype)
    pipe.vae.to(torch.float32 if dtype == torch.float16 else dtype)
    pipe.set_progress_bar_config(disable=True)
    decoder.to(dtype=dtype).eval()
    return LayerDiffuseModel(pipe=pipe, decoder=decoder, device=device, dtype=dtype, identity={"base": "random"})
