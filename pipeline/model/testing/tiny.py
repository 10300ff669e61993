"""A tiny, seeded, random SDXL + LayerDiffuse model, written in the real on-disk formats.

Layout (mirrors what users download):
    <root>/sdxl/                               diffusers SDXL folder with its own small tokenizers
    <root>/sdxl-tiny.safetensors               the same weights as one single-file checkpoint (SGM/LDM names)
    <root>/layerdiffusion-v1/layer_xl_transparent_attn.safetensors   Forge attention LoRA (SGM keys)
    <root>/layerdiffusion-v1/layer_xl_transparent_conv.safetensors   Forge conv offsets (SGM keys)
    <root>/layerdiffusion-v1/vae_transparent_decoder.safetensors     decoder, official key names, fp16
    <root>/layerdiffusion-v1/vae_transparent_encoder.safetensors     encoder, official architecture, fp16
    <root>/layerdiffusion-v1/layer_xl_{fg2ble,bg2ble,fgble2bg,bgble2fg}.safetensors  conditional layer models
                                               (Forge diff format, conv_in widened by 4 or 8 channels)
    <root>/safety-checker/                     StableDiffusionSafetyChecker folder (flags nothing)
Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from ...common.storage import FILE_MODE
from ..decoder import TransparentVAEDecoder
from ..encoder import LatentTransparencyOffsetEncoder
from ..keys import sgm_key_map
from ..safety import build_tiny_safety_checker
from ..sgm_checkpoint import single_file_state_dict
from ..sources import CONDITIONAL_FILES, ENCODER_FILE, TINY_LAYOUT
from .sdxl import random_sdxl_pipeline

ATTN_FILE = "layer_xl_transparent_attn.safetensors"
CONV_FILE = "layer_xl_transparent_conv.safetensors"
DECODER_FILE = "vae_transparent_decoder.safetensors"
TEXT_WIDTH = 32
# The second text encoder is wider, as in SDXL (768 / 1280): single-file loading tells the two apart by width.
TEXT_WIDTH_2 = 48
DECODER_CHANNELS = (8, 8, 16, 24, 32, 48, 48)  # widens where the official one does: same 538 keys
LORA_RANK = 4
MARKER = "tiny_model.json"
SINGLE_FILE = "sdxl-tiny.safetensors"
VERSION = 4  # bumped when the layout changes: older tiny models are rebuilt


def build_tiny_model(root: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny model under `root`; an existing complete one is kept.

    Built in a temporary sibling folder and renamed into place, so concurrent builders (several
    processes of one launch) and interrupted builds never leave a half-written model behind.
    """
    root = Path(root)
    if _complete(root):
        return root
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=_parent(root)))
    try:
        _write_tiny_model(staging, seed)
        if root.exists() and not _complete(root):
            shutil.rmtree(root)  # an incomplete or older layout
        os.replace(staging, root)
    except OSError:
        if not _complete(root):
            raise  # not the harmless race where another process finished first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _complete(root: Path) -> bool:
    try:
        return json.loads((root / MARKER).read_text())["version"] == VERSION
    except (OSError, ValueError, KeyError):
        return False


def _parent(root: Path) -> Path:
    root.parent.mkdir(parents=True, exist_ok=True)
    return root.parent


def _write_tiny_model(root: Path, seed: int) -> None:
    torch.manual_seed(seed)
    pipe = _tiny_sdxl_pipeline()
    pipe.save_pretrained(root / TINY_LAYOUT["base"], safe_serialization=True)
    write_single_file(root, pipe)
    weights = root / TINY_LAYOUT["layerdiffuse"]
    weights.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed + 1)
    save_file(_attn_lora(pipe.unet, generator), weights / ATTN_FILE)
    save_file(_conv_offsets(pipe.unet, generator), weights / CONV_FILE)
    save_file({k: v.half() for k, v in _tiny_decoder(seed + 2).state_dict().items()}, weights / DECODER_FILE)
    build_tiny_safety_checker(root / TINY_LAYOUT["safety_checker"], flag_everything=False, seed=seed + 3)
    save_file({k: v.half() for k, v in _tiny_encoder(seed + 4).state_dict().items()}, weights / ENCODER_FILE)
    generator = torch.Generator().manual_seed(seed + 5)
    for mode, name in CONDITIONAL_FILES.items():
        extra = 8 if mode.startswith("blend2") else 4  # one or two condition latents
        save_file(_conditional_diff(pipe.unet, generator, extra), weights / name)
    marker = {"seed": seed, "kind": "tiny-sdxl-layerdiffuse", "version": VERSION}
    (root / MARKER).write_text(json.dumps(marker) + "\n")
    _usual_permissions(root)


def _usual_permissions(root: Path) -> None:
    """Files 0666 and folders 0777 less the umask, as `open()` and `mkdir()` make them: the staging folder
    (mkdtemp) is 0700 and safetensors writes its files 0600, which would keep other accounts from the model."""
    folder_mode = FILE_MODE | (FILE_MODE & 0o444) >> 2  # searchable by whoever may read
    for path in [root, *root.rglob("*")]:
        path.chmod(folder_mode if path.is_dir() else FILE_MODE)


def write_single_file(root: str | os.PathLike, pipe=None) -> Path:
    """`<root>/sdxl-tiny.safetensors`: the tiny SDXL (`pipe`, else `<root>/sdxl`) as one checkpoint in the
    AUTOMATIC1111 / ComfyUI layout. float32, unlike the fp16 releases, so it loads bit-identical weights."""
    if pipe is None:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(Path(root) / "sdxl", add_watermarker=False)
    path = Path(root) / SINGLE_FILE
    metadata = {"modelspec.architecture": "stable-diffusion-xl-v1-base", "modelspec.title": "tiny random SDXL"}
    save_file(single_file_state_dict(pipe), path, metadata=metadata)
    return path


def _tiny_sdxl_pipeline():
    text = dict(hidden_size=TEXT_WIDTH, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
                vocab_size=514, projection_dim=TEXT_WIDTH)  # fmt: skip
    text_2 = {**text, "hidden_size": TEXT_WIDTH_2, "projection_dim": TEXT_WIDTH_2}
    unet = dict(
        block_out_channels=(16, 32, 64),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 8),
        norm_num_groups=8,
        cross_attention_dim=TEXT_WIDTH + TEXT_WIDTH_2,  # both encoders' hidden states, concatenated
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTH_2,  # six time ids + the pooled embedding
        sample_size=32,
    )
    vae = dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=256)
    return random_sdxl_pipeline(unet, vae, text, text_2)


def _attn_lora(unet, generator) -> dict[str, torch.Tensor]:
    """Forge-format rank-4 LoRA on every attention projection weight, like layer_xl_transparent_attn."""
    out = {}
    params = dict(unet.named_parameters())
    for sgm, key in sgm_key_map(params).items():
        if ".attn" in key and key.endswith(".weight") and ".to_" in key:
            rows, cols = params[key].shape
            out[f"{sgm}::lora::0"] = (torch.randn(rows, LORA_RANK, generator=generator) * 0.05).half()
            out[f"{sgm}::lora::1"] = (torch.randn(LORA_RANK, cols, generator=generator) * 0.05).half()
    return out


def _conv_offsets(unet, generator) -> dict[str, torch.Tensor]:
    """Forge-format offsets for every tensor except attention q/k/v, like layer_xl_transparent_conv."""
    params = dict(unet.named_parameters())
    return {
        f"{sgm}::diff::0": (torch.randn(params[key].shape, generator=generator) * 0.01).half()
        for sgm, key in sgm_key_map(params).items()
        if not any(f".{p}." in key for p in ("to_q", "to_k", "to_v"))
    }


def _tiny_decoder(seed: int) -> TransparentVAEDecoder:
    torch.manual_seed(seed)
    decoder = TransparentVAEDecoder(block_out_channels=DECODER_CHANNELS)
    with torch.no_grad():
        # The released decoder's outputs sit mostly inside [0, 1]; a random one needs this nudge.
        decoder.conv_out.weight.mul_(0.5)
        decoder.conv_out.bias.add_(0.5)
    return decoder


def _tiny_encoder(seed: int) -> LatentTransparencyOffsetEncoder:
    """The official architecture (it is small). The released last conv is trained from zero and its output is
    multiplied by 300 (encoder.py); a random one is scaled down so that 300 x offset stays near one unit."""
    torch.manual_seed(seed)
    encoder = LatentTransparencyOffsetEncoder()
    with torch.no_grad():
        encoder.blocks[-1].weight.div_(30.0)
        encoder.blocks[-1].bias.div_(30.0)
    return encoder


def _conditional_diff(unet, generator, extra_channels: int) -> dict[str, torch.Tensor]:
    """A conditional layer model file: Forge diffs for every tensor but attention q/k/v, with conv_in's
    widened by `extra_channels` input channels (the condition latents; larger values so they matter)."""
    diff = _conv_offsets(unet, generator)
    conv_in = "diffusion_model.input_blocks.0.0.weight::diff::0"
    out_channels, in_channels, *kernel = diff[conv_in].shape
    wide = torch.randn(out_channels, in_channels + extra_channels, *kernel, generator=generator) * 0.01
    wide[:, in_channels:] *= 10
    diff[conv_in] = wide.half()
    return diff
