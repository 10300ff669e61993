"""What a single-file checkpoint is (the AUTOMATIC1111 / ComfyUI / Civitai layout), from its header alone.

Only the safetensors header is read, so a wrong file (SD 1.x/2.x, SD3, Flux, a LoRA, a VAE, a truncated
download, a pickle) is refused in milliseconds, before any row runs, with a message that says what was
found and what is needed. Loading an SDXL one is `single_file.load_single_file`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .safetensors_header import HeaderError, SafetensorsHeader, read_header
from .sgm_checkpoint import CLIP_G_PREFIX, CLIP_L_PREFIX, UNET_PREFIX, VAE_PREFIX
from .sources import ModelLoadError

SDXL = "sdxl"
SDXL_WITHOUT_VAE = "sdxl-no-vae"
UNET = UNET_PREFIX + "diffusion_model."
NEEDED = (
    "an SDXL checkpoint as one .safetensors file (UNet `model.diffusion_model.*`, VAE `first_stage_model.*`, "
    "text encoders `conditioner.embedders.0/1.*`: SDXL base or a fine-tune of it), or a diffusers SDXL folder; "
    "the LayerDiffuse weights exist for SDXL only"
)


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    kind: str  # "sdxl", or what else it is: "sd1", "sd2", "sd3", "flux", "lora", "vae", ...
    found: str  # in words, for messages

    @property
    def is_sdxl(self) -> bool:
        return self.kind == SDXL


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Classify a weight file from its header alone; unreadable files raise `ModelLoadError`."""
    try:
        header = read_header(path)
    except HeaderError as exc:
        raise ModelLoadError(f"model file {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    kind, found = classify(header)
    return CheckpointInfo(str(path), kind, found)


def require_sdxl_checkpoint(path: str | os.PathLike, vae_override: bool = False) -> CheckpointInfo:
    """`inspect_checkpoint`, raising `ModelLoadError` (found / needed / how to fix) unless it is SDXL.
    `vae_override`: a VAE is given separately, so a checkpoint without one will do."""
    info = inspect_checkpoint(path)
    if not (info.is_sdxl or (vae_override and info.kind == SDXL_WITHOUT_VAE)):
        raise ModelLoadError(f"{path} is {info.found}; needed: {NEEDED}.{_hint(info.kind)}")
    return info


def classify(header: SafetensorsHeader) -> tuple[str, str]:
    """(kind, description) of a safetensors file, from tensor names and a few shapes."""
    keys = header.tensors
    for test in (_adapter_kind, _transformer_kind, _unet_kind, _component_kind):
        if result := test(header, keys):
            return result
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    return "unknown", f"not a checkpoint layout this tool knows (first tensor names: {sample})"


def _adapter_kind(header: SafetensorsHeader, keys) -> tuple[str, str] | None:
    if any("::lora::" in k or "::diff::" in k for k in keys):
        return "layerdiffuse", "a LayerDiffuse UNet patch (it belongs in model.layerdiffuse, not model.base)"
    lora_marks = ("lora_unet_", "lora_te", ".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1", ".lokr_w")
    if any(k.startswith(lora_marks[:2]) or any(m in k for m in lora_marks[2:]) for k in keys):
        return "lora", "a LoRA (a patch for a model, not a model)"
    return None


def _transformer_kind(header: SafetensorsHeader, keys) -> tuple[str, str] | None:
    if any("double_blocks." in k for k in keys) and any("single_blocks." in k for k in keys):
        return "flux", "a FLUX checkpoint (a transformer, not an SDXL UNet)"
    if any("joint_blocks." in k for k in keys):
        return "sd3", "a Stable Diffusion 3 checkpoint (MMDiT transformer, not an SDXL UNet)"
    return None


def _unet_kind(header: SafetensorsHeader, keys) -> tuple[str, str] | None:
    if not any(k.startswith(UNET) for k in keys):
        return None
    if any(k.startswith("cond_stage_model.model.") for k in keys) or _context_width(header) == 1024:
        return "sd2", "a Stable Diffusion 2.x checkpoint (one OpenCLIP text encoder, 1024-wide cross-attention)"
    if any(k.startswith("cond_stage_model.") for k in keys) or _context_width(header) == 768:
        return "sd1", "a Stable Diffusion 1.x checkpoint (one CLIP text encoder, 768-wide cross-attention)"
    if UNET + "label_emb.0.0.weight" not in keys:
        return "unet-unknown", "a UNet checkpoint of an unknown Stable Diffusion family (no SDXL size conditioning)"
    return _sdxl_kind(header, keys)


def _sdxl_kind(header: SafetensorsHeader, keys) -> tuple[str, str]:
    in_channels = (header.shape(UNET + "input_blocks.0.0.weight") or (0, 4))[1]
    if in_channels != 4:
        return "sdxl-inpaint", f"an SDXL inpainting checkpoint (the UNet takes {in_channels} input channels, not 4)"
    has_clip_l = any(k.startswith(CLIP_L_PREFIX) for k in keys)
    has_clip_g = any(k.startswith(CLIP_G_PREFIX) for k in keys)
    if not has_clip_l and any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        return "sdxl-refiner", "the SDXL refiner (it only refines images, it cannot generate from noise)"
    missing = [name for name, ok in (("the VAE", any(k.startswith(VAE_PREFIX) for k in keys)),
                                     ("the CLIP ViT-L text encoder", has_clip_l),
                                     ("the OpenCLIP bigG text encoder", has_clip_g)) if not ok]  # fmt: skip
    if missing == ["the VAE"]:  # "no VAE" downloads: usable with a VAE given separately
        return SDXL_WITHOUT_VAE, "an SDXL checkpoint without its VAE"
    if missing:
        return "sdxl-partial", f"an SDXL UNet without {' and '.join(missing)} (a UNet-only export)"
    return SDXL, "an SDXL checkpoint"


def _component_kind(header: SafetensorsHeader, keys) -> tuple[str, str] | None:
    plain = {k.removeprefix(VAE_PREFIX).removeprefix("vae.") for k in keys}
    if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.", "decoder.up_blocks.")) for k in plain):
        return "vae", "a VAE alone (it belongs in model.vae, not model.base)"
    if any(k.startswith(("down_blocks.", "input_blocks.", "diffusion_model.")) for k in keys):
        return "unet-only", "a UNet alone (diffusers or SGM names, no text encoders or VAE)"
    if any("text_model.encoder.layers." in k or "transformer.resblocks." in k for k in keys):
        return "text-encoder", "a text encoder alone"
    return None


def _context_width(header: SafetensorsHeader) -> int | None:
    """Width of the text features the UNet's cross-attention reads (768 SD 1.x, 1024 SD 2.x, 2048 SDXL)."""
    for key, tensor in header.tensors.items():
        if key.startswith(UNET) and key.endswith("attn2.to_k.weight") and len(tensor.shape) == 2:
            return tensor.shape[1]
    return None


def _hint(kind: str) -> str:
    hints = {
        "lora": " Pass it with --lora (or the `loras` column), and an SDXL checkpoint as the model.",
        "vae": " Pass it as the VAE (--vae / model.vae), and an SDXL checkpoint as the model.",
        "layerdiffuse": " Point model.layerdiffuse (or model.unet_weights) at it instead.",
        SDXL_WITHOUT_VAE: " Give a VAE with --vae (model.vae), e.g. madebyollin/sdxl-vae-fp16-fix.",
        "sdxl-partial": " Use the full checkpoint, or the diffusers folder of the model.",
        "unet-only": " Use the full checkpoint, or the diffusers folder of the model.",
    }
    return hints.get(kind, "")
