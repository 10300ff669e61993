"""LoRA files: finding them (local path or Hugging Face cache), hashing them, and telling from the header
alone whether a file is a usable SDXL LoRA, before any weight is loaded.

What the header cannot show (layers that exist in SDXL but not with these shapes, names diffusers cannot
place) is caught when the adapter is loaded (lora.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..input.lora_refs import LoraRef
from .checkpoint import classify
from .safetensors_header import HeaderError, SafetensorsHeader, read_header
from .sources import ModelLoadError

KOHYA_PREFIXES = ("lora_unet_", "lora_te1_", "lora_te2_", "lora_te_")
DOWN_SUFFIXES = ("lora_down.weight", "lora_A.weight", ".lora.down.weight", "lora_linear_layer.down.weight")
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
NEEDED = (
    "a LoRA trained for SDXL, as .safetensors in kohya / AUTOMATIC1111 (`lora_unet_*`, `lora_te1_*`, "
    "`lora_te2_*`) or diffusers / PEFT (`unet.*.lora_A.weight`) format"
)
_UNSUPPORTED = {".hada_": "a LyCORIS LoHa", ".lokr_": "a LyCORIS LoKr", "dora_scale": "a DoRA",
                ".lora_mid.": "a LyCORIS LoCon with CP decomposition"}  # fmt: skip
# Layers SD 1.x/2.x UNets have and SDXL's do not: attention in the first level, twelve input/output blocks.
_SD1_LAYERS = re.compile(
    r"(lora_unet_|unet\.)(down_blocks[._]0[._]attentions|input_blocks_[12]_1_|output_blocks_(9|10|11)_|up_blocks[._]3[._]attentions)"
)
_OTHER_FAMILIES = (("double_blocks", "FLUX"), ("single_transformer_blocks", "FLUX"), ("joint_blocks", "SD 3"),
                   ("context_block", "SD 3"))  # fmt: skip
_HUB_REPO = re.compile(r"[\w.-]+/[\w.-]+")
_HUB_FILE = re.compile(r"([\w.-]+/[\w.-]+)/(.+\.safetensors)")


class LoraError(ModelLoadError):
    """A LoRA file is missing, damaged, or not for this model; the message names the file and the fix."""


@dataclass(frozen=True)
class LoraFileInfo:
    format: str  # "kohya" or "peft"
    modules: int  # low-rank layers in the file: each must land on a layer of the model
    found: str  # in words, for messages


@dataclass(frozen=True)
class ResolvedLora:
    """A LoRA found on disk, identified by its content: moving or renaming the file changes nothing."""

    ref: LoraRef
    path: str
    sha256: str
    name: str  # display name: the file's stem (what AUTOMATIC1111 writes in `<lora:name:weight>`)
    info: LoraFileInfo

    @property
    def weight(self) -> float:
        return self.ref.weight

    @property
    def identity(self) -> dict:
        """What decides the pixels, for the request hash: the file's content and the weight."""
        return {"sha256": self.sha256, "weight": self.weight}


def lora_set_key(loras) -> tuple[tuple[str, float], ...]:
    """One value per LoRA set, for batching rows and for the request hash: (sha256, weight) pairs, sorted,
    so the order a set is written in does not matter. Weight 0 stays in: `x:0` is a different request
    from no LoRA (even though it gives the same pixels)."""
    return tuple(sorted((lora.sha256, float(lora.weight)) for lora in loras))


def resolve_lora(ref: LoraRef) -> ResolvedLora:
    """Find the file (local path or folder, hub id in the Hugging Face cache), check its header, hash it."""
    from ..common.fingerprint import sha256_file

    path = find_lora_file(ref.source)
    info = inspect_lora(path)
    return ResolvedLora(ref, str(path), sha256_file(path), _display_name(ref.source, path), info)


def inspect_lora(path: str | Path) -> LoraFileInfo:
    """Format and layer count from the header; `LoraError` for damaged files, non-LoRAs and other families."""
    try:
        header = read_header(path)
    except HeaderError as exc:
        raise LoraError(f"LoRA file {exc}") from exc
    except OSError as exc:
        raise LoraError(f"cannot read LoRA file {path}: {exc.strerror or exc}") from exc
    keys = list(header.tensors)
    if not any(
        k.startswith(KOHYA_PREFIXES) or any(s in k for s in ("lora_A", "lora_B", "lora_down", ".lora.")) for k in keys
    ):
        raise LoraError(f"{path} is {classify(header)[1]}, not a LoRA; needed: {NEEDED}")
    _refuse_other_kinds(path, header, keys)
    kohya = all(k.startswith(KOHYA_PREFIXES) for k in keys)
    modules = sum(1 for k in keys if k.endswith(DOWN_SUFFIXES))
    fmt = "kohya" if kohya else "peft"
    layers = f"{modules} layer{'' if modules == 1 else 's'}"
    return LoraFileInfo(fmt, modules, f"a {fmt}-format LoRA with {layers}{_base_model(header)}")


def _refuse_other_kinds(path, header: SafetensorsHeader, keys: list[str]) -> None:
    for mark, kind in _UNSUPPORTED.items():
        if any(mark in k for k in keys):
            raise LoraError(
                f"{path} is {kind} (`{mark.strip('.')}` tensors), which diffusers cannot apply; needed: {NEEDED}"
            )
    for mark, family in _OTHER_FAMILIES:
        if any(mark in k for k in keys):
            raise LoraError(f"{path} is a LoRA for {family} (`{mark}` layers){_base_model(header)}; needed: {NEEDED}")
    one_text_encoder = any(k.startswith("lora_te_") for k in keys)
    if one_text_encoder or any(_SD1_LAYERS.match(k) for k in keys):
        why = "one text encoder, `lora_te_`" if one_text_encoder else "layers SDXL does not have"
        raise LoraError(f"{path} is a LoRA for Stable Diffusion 1.x/2.x ({why}){_base_model(header)}; needed: {NEEDED}")


def _base_model(header: SafetensorsHeader) -> str:
    meta = header.metadata
    named = meta.get("ss_base_model_version") or meta.get("modelspec.architecture")
    return f", trained on {named!r} by its metadata" if named else ""


def find_lora_file(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _single_lora_in(path, source)
    if m := _HUB_FILE.fullmatch(source):
        return _hub_file(m.group(1), m.group(2), source)
    if _HUB_REPO.fullmatch(source) and not source.startswith("."):
        return _hub_repo_file(source)
    raise LoraError(
        f"LoRA {source}: no such file. Give the path of a .safetensors LoRA, or a hub id (`owner/name` or "
        "`owner/name/file.safetensors`) whose file is in the Hugging Face cache"
    )


def _single_lora_in(folder: Path, source: str) -> Path:
    candidates = sorted(folder.glob("*.safetensors"))
    preferred = [c for c in candidates if c.name == DIFFUSERS_LORA_FILE]
    if len(preferred) == 1 or len(candidates) == 1:
        return (preferred or candidates)[0]
    names = ", ".join(c.name for c in candidates) or "none"
    raise LoraError(f"LoRA {source}: a folder with {len(candidates)} .safetensors files ({names}); name the file")


def _hub_file(repo_id: str, filename: str, source: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as exc:  # offline and not cached, no such repo or file: all mean "not available"
        raise LoraError(
            f"LoRA {source}: {filename} from hub repo {repo_id} is not in the Hugging Face cache; download it "
            f"elsewhere (`huggingface-cli download {repo_id} {filename}`) and copy the cache (HF_HOME), or give a path"
        ) from exc


def _hub_repo_file(repo_id: str) -> Path:
    """`owner/name`: diffusers' file name if cached, else the repo's only cached .safetensors file."""
    from huggingface_hub import snapshot_download

    try:
        return _hub_file(repo_id, DIFFUSERS_LORA_FILE, repo_id)
    except LoraError:
        pass
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.safetensors"], local_files_only=True))
    except Exception as exc:
        raise LoraError(
            f"LoRA {repo_id}: hub repo not in the Hugging Face cache; download it elsewhere "
            f"(`huggingface-cli download {repo_id} FILE.safetensors`) and copy the cache (HF_HOME), or give a path"
        ) from exc
    return _single_lora_in(folder, repo_id)


def _display_name(source: str, path: Path) -> str:
    if path.name == DIFFUSERS_LORA_FILE and _HUB_REPO.match(source):
        return source.split("/")[1]
    return path.stem
