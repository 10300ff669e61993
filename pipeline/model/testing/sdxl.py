"""Random-weight SDXL pipelines in the SDXL layout, at any width: the tiny test model and the full size.

The layout (block types, two resnets per level, linear transformer projections, text-time embedding)
is what makes the SGM parameter names of `keys.py` apply, so every build shares it.
"""

from __future__ import annotations

from ..sdxl_config import clip_byte_symbols

UNET_LAYOUT = dict(
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    use_linear_projection=True,
    addition_embed_type="text_time",
)
VAE_LAYOUT = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    scaling_factor=0.13025,
)
# SDXL base's scheduler settings; the tokenizer ids below are those of `tiny_tokenizer`.
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                 timestep_spacing="leading")  # fmt: skip
TOKEN_IDS = dict(max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)


def random_sdxl_pipeline(unet: dict, vae: dict, text_encoder: dict, text_encoder_2: dict):
    """A StableDiffusionXLPipeline with random weights; the dicts hold the widths (layouts are fixed)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_model = UNet2DConditionModel(**UNET_LAYOUT, **unet)  # built first: the seeded weights depend on order
    vae_model = AutoencoderKL(**VAE_LAYOUT, **vae)
    return StableDiffusionXLPipeline(
        vae=vae_model,
        text_encoder=CLIPTextModel(CLIPTextConfig(**TOKEN_IDS, **text_encoder)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**TOKEN_IDS, **text_encoder_2)),
        tokenizer=tiny_tokenizer(),
        tokenizer_2=tiny_tokenizer(),
        unet=unet_model,
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
        add_watermarker=False,
    )


def tiny_tokenizer():
    """A byte-level CLIP tokenizer with no merges: every character is a token."""
    from transformers import CLIPTokenizer

    chars = clip_byte_symbols()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
