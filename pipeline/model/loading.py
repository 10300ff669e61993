"""Loading SDXL + LayerDiffuse the way users point at weights: hub ids, local folders, single files."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig
from .decoder import TransparentVAEDecoder
from .merge import load_safetensors, merge_layerdiffuse_weights
from .safety import CHECKER_FILES, SafetyChecker, load_safety_checker
from .tiny import build_tiny_model

SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
SDXL_FOLDERS = ("model_index.json", "unet/", "vae/", "text_encoder/", "text_encoder_2/", "tokenizer/",
                "tokenizer_2/", "scheduler/")  # fmt: skip


class ModelLoadError(RuntimeError):
    """The model cannot be built: files missing, damaged, or not what they should be."""


class ModelFilesMissing(ModelLoadError):
    """Weights that are neither on disk nor in the Hugging Face cache (and cannot be downloaded)."""


@dataclass
class LayerDiffuseModel:
    pipe: object  # diffusers StableDiffusionXLPipeline with the LayerDiffuse UNet merged in
    decoder: TransparentVAEDecoder
    device: torch.device
    dtype: torch.dtype
    identity: dict = field(default_factory=dict)  # what produced the images, for the manifest
    safety_checker: SafetyChecker | None = None  # loaded only when some row asks for it


@dataclass
class Sources:
    base: str
    vae: str | None
    unet_weights: str
    decoder_weights: str
    safety_checker: str | None = None
    missing: list[str] = field(default_factory=list)


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
    config: ModelConfig, device: torch.device | None = None, safety_checker: bool = False
) -> LayerDiffuseModel:
    """Resolve every file first (one error listing all that are missing), then build the model.

    `safety_checker`: also load the checker (some row asks for it).
    """
    quiet_libraries()
    device = device or resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if config.build_tiny_if_missing:
        build_tiny_model(Path(config.base).parent)
    sources = resolve_sources(config, safety_checker)
    if sources.missing:
        raise ModelFilesMissing(_missing_message(sources.missing, checker_missing=_checker_missing(sources)))
    with _loading("the SDXL model", sources.base):
        pipe = _load_sdxl(config, sources, dtype)
    with _loading("the LayerDiffuse UNet weights", sources.unet_weights):
        merge_layerdiffuse_weights(pipe.unet, load_safetensors(sources.unet_weights), config.strength)
    with _loading("the transparent decoder", sources.decoder_weights):
        decoder = load_decoder(sources.decoder_weights)
    pipe.to(device)
    pipe.vae.to(_vae_dtype(pipe.vae, dtype))
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
    return LayerDiffuseModel(pipe, decoder, device, dtype, identity, checker)


@contextmanager
def _loading(what: str, source: str):
    """Damaged or mismatched weight files become one clear error naming the file."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as exc:  # safetensors, diffusers and transformers raise many kinds
        raise ModelLoadError(f"cannot load {what} from {source}: {type(exc).__name__}: {exc}") from exc


def resolve_sources(config: ModelConfig, safety_checker: bool = False) -> Sources:
    missing: list[str] = []
    base = _resolve_base(config.base, missing)
    vae = _resolve_base(config.vae, missing, what="VAE", needs=("config.json",)) if config.vae else None
    unet_weights = _resolve_file(config.layerdiffuse, config.unet_weights_file, missing)
    decoder_weights = _resolve_file(config.layerdiffuse, config.decoder_weights, missing)
    checker = None
    if safety_checker:
        checker = _resolve_base(config.safety_checker, missing, what="safety checker", needs=CHECKER_FILES)
    return Sources(base, vae, unet_weights, decoder_weights, checker, missing)


def _checker_missing(sources: Sources) -> bool:
    return any(m.startswith("safety checker") for m in sources.missing)


def _looks_local(spec: str) -> bool:
    """Hub ids are `owner/name`; anything else (or anything on disk) is a local path."""
    return (
        spec.startswith((".", "/", "~"))
        or spec.endswith(".safetensors")
        or spec.count("/") != 1
        or Path(spec).expanduser().exists()
    )


def _resolve_base(spec: str, missing: list[str], what: str = "SDXL base model", needs=SDXL_FOLDERS) -> str:
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        absent = [n for n in needs if not (path / n.rstrip("/")).exists()]
        missing += [f"{what}: {path / n} (local folder lacks it)" for n in absent]
        return str(path)
    if _looks_local(spec):
        missing.append(f"{what}: {spec} (no such file or folder)")
        return spec
    if _hub_file(spec, needs[0]) is None:
        missing.append(f"{what}: hub repo {spec} ({', '.join(needs)}) is not in the Hugging Face cache")
    return spec


def _resolve_file(location: str, name: str, missing: list[str]) -> str:
    direct = Path(name).expanduser()
    if direct.is_file():
        return str(direct)
    if _looks_local(location) or "/" in name:
        path = Path(location).expanduser() / name
        if not path.is_file():
            missing.append(f"LayerDiffuse weights: {path} (no such file)")
        return str(path)
    cached = _hub_file(location, name)
    if cached is None:
        missing.append(f"LayerDiffuse weights: {name} from hub repo {location} is not in the Hugging Face cache")
    return cached or f"{location}/{name}"


def _hub_file(repo_id: str, filename: str) -> str | None:
    """Path of a hub file: from the cache, else downloaded (unless HF_HUB_OFFLINE); None if unavailable."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename)
    except Exception:  # offline, not cached, no such repo/file, network down: all mean "missing"
        return None


def _missing_message(missing: list[str], checker_missing: bool = False) -> str:
    lines = "\n".join(f"  - {m}" for m in missing)
    checker = (
        "  * for the safety checker: download CompVis/stable-diffusion-safety-checker (or set\n"
        "    model.safety_checker to a local folder), or turn it off: --no-safety-checker\n"
        "    (run.safety_checker: false), or enable_safety_checker=false in the rows\n"
        if checker_missing
        else ""
    )
    return (
        f"model files are missing:\n{lines}\n"
        "Provide them in one of these ways:\n"
        "  * download on a machine with network, e.g.\n"
        "      huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0\n"
        "      huggingface-cli download LayerDiffusion/layerdiffusion-v1 "
        "layer_xl_transparent_attn.safetensors vae_transparent_decoder.safetensors\n"
        "    and copy the Hugging Face cache (HF_HOME) here;\n"
        "  * or point the config at local copies: model.base (diffusers folder or .safetensors checkpoint),\n"
        "    model.layerdiffuse (folder with the LayerDiffuse files), model.vae;\n"
        f"{checker}"
        "  * or try the pipeline with the embedded tiny model: --config configs/tiny.yaml"
    )


def _load_sdxl(config: ModelConfig, sources: Sources, dtype: torch.dtype):
    import diffusers

    extra = {}
    if sources.vae:
        extra["vae"] = diffusers.AutoencoderKL.from_pretrained(sources.vae, dtype=dtype)
    if sources.base.endswith(".safetensors"):
        if config.base_config:
            extra["config"] = config.base_config
        pipe = diffusers.StableDiffusionXLPipeline.from_single_file(sources.base, dtype=dtype, **extra)
    else:
        if config.variant:
            extra["variant"] = config.variant
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
            sources.base, dtype=dtype, add_watermarker=False, use_safetensors=True, **extra
        )
    pipe.watermark = None  # the invisible watermark is for 3-channel images; ours carry alpha
    class_name, options = SCHEDULERS[config.scheduler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **options)
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
