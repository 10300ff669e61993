"""Loading an SDXL single-file checkpoint offline, with a configuration folder that is already on disk.

diffusers' `from_single_file` needs a diffusers configuration (no weights) to build the pipeline: that
of `model.base_config` (a local diffusers folder, or a hub id whose configs are in the Hugging Face cache),
else the SDXL base configuration shipped in the package. It is resolved to a local folder first, so
diffusers never reaches for the network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import require_sdxl_checkpoint
from .sdxl_config import shipped_config_dir
from .sources import ModelFilesMissing

CONFIG_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "text_encoder_2/config.json", "scheduler/scheduler_config.json")  # fmt: skip
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")
CONFIG_PATTERNS = ["*.json", "*/*.json", "*/*.txt"]
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def load_single_file(path: str | os.PathLike, base_config: str | None, dtype, **components):
    """A StableDiffusionXLPipeline from an SDXL single-file checkpoint; `components` (e.g. `vae=`) replace
    the checkpoint's own. Anything but SDXL is refused from the header before a tensor is read."""
    import diffusers

    require_sdxl_checkpoint(path, vae_override="vae" in components)
    config = resolve_base_config(base_config)
    return diffusers.StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True, dtype=dtype, add_watermarker=False, **components
    )


def resolve_base_config(spec: str | None) -> Path:
    """Local folder with the diffusers SDXL configuration: `spec` (folder or cached hub id), or the shipped one."""
    if spec is None:
        return shipped_config_dir()
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        if folder.exists() or not _HUB_ID.fullmatch(spec):
            raise ModelFilesMissing(
                f"model.base_config: {spec} is no diffusers folder (nor a hub id `owner/name`); point it at a "
                "diffusers SDXL folder, or leave it out to use the SDXL base configuration shipped with the tool"
            )
        folder = _cached_hub_configs(spec)
    absent = [name for name in _needed_files(folder) if not (folder / name).is_file()]
    if absent:
        raise ModelFilesMissing(
            f"model.base_config: {spec} lacks {', '.join(absent)}; point it at a complete diffusers SDXL folder "
            "(configs and tokenizers suffice, no weights), or leave it out to use the shipped SDXL configuration"
        )
    return folder


def _needed_files(folder: Path) -> list[str]:
    tokenizers = []
    for name in TOKENIZER_FOLDERS:  # the slow files (vocab + merges) or the fast tokenizer.json
        fast = folder / name / "tokenizer.json"
        tokenizers += [f"{name}/tokenizer.json"] if fast.is_file() else [f"{name}/vocab.json", f"{name}/merges.txt"]
    return [*CONFIG_FILES, *tokenizers]


def _cached_hub_configs(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=CONFIG_PATTERNS, local_files_only=True))
    except Exception as exc:  # not cached (or no such repo): offline, that is all we can tell
        raise ModelFilesMissing(
            f"model.base_config: hub repo {repo_id} is not in the Hugging Face cache. Download its configs "
            f"elsewhere (`huggingface-cli download {repo_id} --include '*.json' '*/*.json' '*/*.txt'`) and copy "
            "the cache (HF_HOME), or leave model.base_config out to use the shipped SDXL configuration"
        ) from exc
