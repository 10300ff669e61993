"""Loading SDXL + LayerDiffuse the way users point at weights: hub ids, local folders, single files."""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..input.config import ModelConfig
from ..input.schedulers import SCHEDULERS
from .alignment import align_cpu_weights
from .decoder import TransparentVAEDecoder
from .encoder import OFFSET_SCALE, LatentTransparencyOffsetEncoder, load_encoder
from .merge import load_safetensors, merge_layerdiffuse_weights
from .safety import SafetyChecker, load_safety_checker
from .single_file import load_single_file
from .sources import ModelFilesMissing, ModelLoadError, Sources, resolve_sources
from .testing import ensure_tiny_model
from .vae import load_vae, vae_config_folder

__all__ = ["LayerDiffuseModel", "ModelFilesMissing", "ModelLoadError", "load_model", "resolve_device"]


@dataclass
class LayerDiffuseModel:
    pipe: object  # diffusers StableDiffusionXLPipeline with the LayerDiffuse UNet merged in
    decoder: TransparentVAEDecoder
    device: torch.device
    dtype: torch.dtype
    identity: dict = field(default_factory=dict)  # what produced the images, for the manifest
    safety_checker: SafetyChecker | None = None  # loaded only when some row asks for it
    encoder: LatentTransparencyOffsetEncoder | None = None  # loaded only when some row encodes an image
    conditional: dict = field(default_factory=dict)  # mode -> conditional UNet (conditional.py), as rows need


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, spec)


def quiet_libraries() -> None:
    """Library chatter (per-file progress bars, dtype notices) would drown the run log."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_model(
    config: ModelConfig,
    device: torch.device | None = None,
    safety_checker: bool = False,
    sources: Sources | None = None,
    encoder: bool = False,
    modes: tuple[str, ...] = (),
) -> LayerDiffuseModel:
    """Resolve every file first (one error listing all that are missing), then build the model.

    `safety_checker`: also load the checker (some row asks for it); `sources`: already resolved ones (resolved
    with the same `encoder` / `modes`); `encoder`: load the transparent encoder (img2img, hires); `modes`: the
    conditional layer models to build (sources.CONDITIONAL_FILES; "fg" needs none).
    """
    quiet_libraries()
    device = device or resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if sources is None:
        ensure_tiny_model(config)
        sources = resolve_sources(config, safety_checker, encoder, modes)
    sources.raise_if_missing()
    with _loading("the SDXL model", sources.base):
        pipe = _load_sdxl(config, sources, dtype)
    conditional = _load_conditional(pipe.unet, sources, config.strength)  # from the base UNet, before the merge
    with _loading("the LayerDiffuse UNet weights", sources.unet_weights):
        merge_layerdiffuse_weights(pipe.unet, load_safetensors(sources.unet_weights), config.strength)
    with _loading("the transparent decoder", sources.decoder_weights):
        decoder = load_decoder(sources.decoder_weights)
    pipe.to(device)
    pipe.vae.to(_vae_dtype(pipe.vae, dtype))
    # Inference only: every weight frozen from the start, as PEFT freezes the base when it loads a LoRA. A
    # weight that requires grad sends torch's matmul down another path (other low bits), so without this the
    # rows without a LoRA would change once any LoRA had been loaded in the process.
    for component in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, decoder):
        component.requires_grad_(False)
    for unet in conditional.values():
        unet.requires_grad_(False).to(device).eval()
    if device.type == "cpu":  # results must not depend on which file the weights came from (alignment.py)
        align_cpu_weights(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, *conditional.values())
    decoder.to(device=device, dtype=dtype).eval()
    pipe.set_progress_bar_config(disable=True)
    apply_speed_options(pipe, decoder, config)
    identity = {
        "base": config.base,
        "vae": config.vae,
        "unet_weights": sources.unet_weights,
        "decoder_weights": sources.decoder_weights,
        "injection": config.injection,
        "strength": config.strength,
        "scheduler": config.scheduler,
        "dtype": str(dtype).removeprefix("torch."),
        "vae_dtype": str(pipe.vae.dtype).removeprefix("torch."),
    }
    checker = None
    if safety_checker:
        with _loading("the safety checker", sources.safety_checker):
            checker = load_safety_checker(sources.safety_checker, device, dtype)
        identity["safety_checker"] = sources.safety_checker
    model = LayerDiffuseModel(pipe, decoder, device, dtype, identity, checker, conditional=conditional)
    _load_encoder(model, sources)
    return model


def _load_encoder(model: LayerDiffuseModel, sources: Sources) -> None:
    """The encoder when rows need it; the identity names the new files only then, so text-to-image
    identities (and the rows they mark done) stay as they were."""
    if sources.encoder_weights:
        with _loading("the transparent encoder", sources.encoder_weights):
            model.encoder = load_encoder(sources.encoder_weights).to(device=model.device, dtype=model.dtype)
        model.identity.update(encoder_weights=sources.encoder_weights, encoder_offset_scale=OFFSET_SCALE)
    if model.conditional:
        model.identity["conditional_weights"] = dict(sorted(sources.conditional_weights.items()))


def _load_conditional(unet, sources: Sources, strength: float) -> dict:
    """Each conditional layer model is its own copy of the base UNet with its "diff" merged (SPEC §2)."""
    if not sources.conditional_weights:
        return {}
    from .conditional_unet import build_conditional_unet

    built = {}
    for mode, path in sources.conditional_weights.items():
        with _loading(f"the {mode} layer model", path):
            built[mode] = build_conditional_unet(copy.deepcopy(unet), load_safetensors(path), strength)
    return built


@contextmanager
def _loading(what: str, source: str):
    """Damaged or mismatched weight files become one clear error naming the file."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as exc:  # safetensors, diffusers and transformers raise many kinds
        raise ModelLoadError(f"cannot load {what} from {source}: {type(exc).__name__}: {exc}") from exc


def _load_sdxl(config: ModelConfig, sources: Sources, dtype: torch.dtype):
    import diffusers

    extra = {}
    if sources.vae:  # folder, hub id or single file (vae.py)
        extra["vae"] = load_vae(sources.vae, dtype, vae_config_folder(sources.base, config.base_config))
    if Path(sources.base).is_file():  # single-file checkpoint: refused unless SDXL, loaded offline (single_file.py)
        pipe = load_single_file(sources.base, config.base_config, dtype, **extra)
    else:
        if config.variant:
            extra["variant"] = config.variant
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
            sources.base, dtype=dtype, add_watermarker=False, use_safetensors=True, **extra
        )
    pipe.watermark = None  # the invisible watermark is for 3-channel images; ours carry alpha
    chosen = SCHEDULERS[config.scheduler]
    pipe.scheduler = getattr(diffusers, chosen.diffusers_class).from_config(pipe.scheduler.config, **chosen.options)
    return pipe


def apply_speed_options(pipe, decoder: TransparentVAEDecoder, config: ModelConfig) -> None:
    if config.channels_last:
        for module in (pipe.unet, pipe.vae, decoder):
            module.to(memory_format=torch.channels_last)
    if config.vae_tiling:
        pipe.vae.enable_tiling()
    if config.compile:
        for module in (pipe.unet, pipe.vae.decoder, decoder):
            module.compile()


def _vae_dtype(vae, dtype: torch.dtype) -> torch.dtype:
    # The stock SDXL VAE overflows in fp16 (docs/layerdiffuse.md §5); it runs in fp32 unless it says it need not.
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return torch.float32
    return dtype


def load_decoder(path: str | os.PathLike) -> TransparentVAEDecoder:
    """The decoder's widths are read off the weights, so the released file and smaller ones both load."""
    state = load_safetensors(path)
    levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("down_blocks.")})
    channels = tuple(state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in levels)
    decoder = TransparentVAEDecoder(
        in_channels=state["conv_in.weight"].shape[1],
        out_channels=state["conv_out.weight"].shape[0],
        block_out_channels=channels,
        latent_channels=state["latent_conv_in.weight"].shape[1],
    )
    decoder.load_state_dict(state, strict=True)
    return decoder
