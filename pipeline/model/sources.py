"""Where the weights are: hub ids, local folders and single files resolved before anything loads.

Torch-free, so a run can identify its weights (and find it has nothing to do) without importing torch.
Every source is resolved first, so one error lists every missing file and how to provide it.
"""

from __future__ import annotations

import functools
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from ..input.config import ModelConfig

SDXL_FOLDERS = ("model_index.json", "unet/", "vae/", "text_encoder/", "text_encoder_2/", "tokenizer/",
                "tokenizer_2/", "scheduler/")  # fmt: skip
CHECKER_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")
# Needed only by rows that encode an image (img2img, hires) or run a conditional layer model (SPEC §2).
ENCODER_FILE = "vae_transparent_encoder.safetensors"
CONDITIONAL_FILES = {
    "fg2blend": "layer_xl_fg2ble.safetensors",  # foreground -> blended image
    "bg2blend": "layer_xl_bg2ble.safetensors",  # background -> blended image
    "blend2bg": "layer_xl_fgble2bg.safetensors",  # foreground + blend -> background
    "blend2fg": "layer_xl_bgble2fg.safetensors",  # background + blend -> transparent foreground
}
MODES = ("fg", *CONDITIONAL_FILES)  # "fg": the transparent text-to-image model, no extra file


class ModelLoadError(RuntimeError):
    """The model cannot be built: files missing, damaged, or not what they should be."""


class ModelFilesMissing(ModelLoadError):
    """Weights that are neither on disk nor in the Hugging Face cache (and cannot be downloaded)."""


@dataclass
class Sources:
    base: str
    vae: str | None
    unet_weights: str
    decoder_weights: str
    safety_checker: str | None = None
    encoder_weights: str | None = None  # resolved only when some row encodes an image
    conditional_weights: dict[str, str] = field(default_factory=dict)  # mode -> file, for the modes rows use
    missing: list[str] = field(default_factory=list)
    revisions: dict[str, str] = field(default_factory=dict)  # hub repo id -> the cached snapshot's commit

    def raise_if_missing(self) -> None:
        if self.missing:
            checker = any(m.startswith("safety checker") for m in self.missing)
            raise ModelFilesMissing(_missing_message(self.missing, checker, self._missing_extras()))

    def _missing_extras(self) -> list[str]:
        """Names of the img2img / conditional files among the missing, for the download command."""
        names = [Path(p).name for p in (self.encoder_weights, *self.conditional_weights.values()) if p]
        return [n for n in names if any(n in m for m in self.missing)]


# Where the embedded tiny model keeps its parts, under its root folder (model/testing/tiny.py writes them).
TINY_LAYOUT = {"base": "sdxl", "layerdiffuse": "layerdiffusion-v1", "safety_checker": "safety-checker"}


def tiny_root(config: ModelConfig) -> Path | None:
    """The tiny model's root when every model path is its own part there; else None. A `--model` of the
    user's own (or a mistyped path) is never filled with random weights: a missing one is exit 4."""
    root = Path(config.base).expanduser().parent
    parts = {name: Path(getattr(config, name)).expanduser() for name in TINY_LAYOUT}
    return root if all(parts[name] == root / folder for name, folder in TINY_LAYOUT.items()) else None


def resolve_sources(
    config: ModelConfig, safety_checker: bool = False, encoder: bool = False, modes: tuple[str, ...] = ()
) -> Sources:
    """`encoder`: some row encodes an RGBA image (img2img, hires); `modes`: the layer modes rows use (MODES).
    Neither is resolved otherwise, so text-to-image needs (and loads) nothing new."""
    sources = Sources(base="", vae=None, unet_weights="", decoder_weights="")
    sources.base = _resolve_base(config.base, sources)
    if config.vae:
        sources.vae = _resolve_base(config.vae, sources, what="VAE", needs=("config.json",))
    sources.unet_weights = _resolve_file(config.layerdiffuse, config.unet_weights_file, sources)
    sources.decoder_weights = _resolve_file(config.layerdiffuse, config.decoder_weights, sources)
    if safety_checker:
        sources.safety_checker = _resolve_base(config.safety_checker, sources, "safety checker", CHECKER_FILES)
    if encoder:
        sources.encoder_weights = _resolve_file(config.layerdiffuse, encoder_file(config), sources)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown layer mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode in CONDITIONAL_FILES:
            sources.conditional_weights[mode] = _resolve_file(
                config.layerdiffuse, conditional_file(config, mode), sources
            )
    return sources


def encoder_file(config: ModelConfig) -> str:
    """`model.encoder_weights` (file name in `layerdiffuse`, or a path) when the config has it, else the release's."""
    return getattr(config, "encoder_weights", None) or ENCODER_FILE


def conditional_file(config: ModelConfig, mode: str) -> str:
    """`model.conditional_weights[mode]` when the config has it, else the released file name."""
    return (getattr(config, "conditional_weights", None) or {}).get(mode) or CONDITIONAL_FILES[mode]


def is_hub_id(spec: str) -> bool:
    """Hub ids are `owner/name`; anything else (or anything on disk) is a local path."""
    return not (
        spec.startswith((".", "/", "~"))
        or spec.endswith(".safetensors")
        or spec.count("/") != 1
        or Path(spec).expanduser().exists()
    )


def _resolve_base(spec: str, sources: Sources, what: str = "SDXL base model", needs=SDXL_FOLDERS) -> str:
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        absent = [n for n in needs if not (path / n.rstrip("/")).exists()]
        sources.missing += [f"{what}: {path / n} (local folder lacks it)" for n in absent]
        return str(path)
    if not is_hub_id(spec):
        sources.missing.append(f"{what}: {spec} (no such file or folder)")
        return spec
    cached = hub_file(spec, needs[0])
    if cached is None:
        sources.missing.append(f"{what}: hub repo {spec} ({', '.join(needs)}) is not in the Hugging Face cache")
    else:
        sources.revisions[spec] = Path(cached).parent.name  # .../snapshots/<commit>/<file>
    return spec


def _resolve_file(location: str, name: str, sources: Sources) -> str:
    direct = Path(name).expanduser()
    if direct.is_file():
        return str(direct)
    if not is_hub_id(location) or "/" in name:
        path = Path(location).expanduser() / name
        if not path.is_file():
            sources.missing.append(f"LayerDiffuse weights: {path} (no such file)")
        return str(path)
    cached = hub_file(location, name)
    if cached is None:
        sources.missing.append(f"LayerDiffuse weights: {name} from hub repo {location} is not in the HF cache")
    return cached or f"{location}/{name}"


def hub_file(repo_id: str, filename: str) -> str | None:
    """Path of a hub file: from the cache, else downloaded (unless offline); None if unavailable."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return cached
    if constants.HF_HUB_OFFLINE or not _hub_reachable(constants.ENDPOINT):
        return None
    try:
        return hf_hub_download(repo_id, filename)
    except Exception:  # no such repo or file, access denied, network gone: all mean "missing"
        return None


@functools.cache
def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """One quick connection attempt per run: without network, the hub client would retry every file for
    half a minute before giving up."""
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _missing_message(missing: list[str], checker_missing: bool = False, extras: list[str] | None = None) -> str:
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
        f"{_extras_command(extras or [])}"
        "    and copy the Hugging Face cache (HF_HOME) here; set HF_HUB_OFFLINE=1 on machines without network\n"
        "    so that nothing waits for a download;\n"
        "  * or point the config (or flags) at local copies: model.base / --model (diffusers folder or\n"
        "    .safetensors checkpoint), model.layerdiffuse (folder with the LayerDiffuse files), model.vae / --vae;\n"
        f"{checker}"
        "  * or try the pipeline with the embedded tiny model: --config configs/tiny.yaml"
    )


def _extras_command(names: list[str]) -> str:
    if not names:
        return ""
    return f"      huggingface-cli download LayerDiffusion/layerdiffusion-v1 {' '.join(names)}\n"
