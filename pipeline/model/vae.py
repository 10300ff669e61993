"""The VAE override (`model.vae`): a diffusers folder, a hub id, or one .safetensors file.

A single file carries no configuration; it takes the base model's VAE configuration (its diffusers folder,
`model.base_config`, or the shipped SDXL one), which is also what makes it a drop-in replacement.
Precision: the stock SDXL VAE overflows in float16 (black or NaN images); its configuration says
`force_upcast: true`, and loading.py then runs it in float32 while the rest runs in float16. A VAE whose
configuration says otherwise (madebyollin/sdxl-vae-fp16-fix) runs in float16. bfloat16 has float32's
range and needs no upcast.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import inspect_checkpoint
from .sources import ModelLoadError

VAE_KINDS = ("vae", "sdxl")  # a VAE file, or a full SDXL checkpoint whose VAE is wanted


def load_vae(spec: str, dtype: torch.dtype, config_folder: str | os.PathLike):
    """AutoencoderKL from a folder / hub id (its own config) or a single file (the config of `config_folder`)."""
    from diffusers import AutoencoderKL

    path = Path(spec).expanduser()
    if not path.is_file():
        return AutoencoderKL.from_pretrained(spec, dtype=dtype)
    _require_vae_file(path)
    try:
        vae = AutoencoderKL.from_single_file(
            str(path), config=str(config_folder), subfolder="vae", local_files_only=True, dtype=dtype
        )
    except Exception as exc:  # missing weights surface as meta-tensor errors, wrong shapes as size mismatches
        raise _not_this_vae(path, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    empty = [name for name, p in vae.named_parameters() if p.is_meta]  # weights the file did not have
    if empty:
        raise _not_this_vae(path, f"it lacks {len(empty)} of the VAE's weights, e.g. {empty[0]}")
    return vae


def vae_config_folder(base: str, base_config: str | None) -> str:
    """Whose VAE configuration a single-file VAE takes: the base model's."""
    from .single_file import resolve_base_config

    if base_config or Path(base).is_file():
        return str(resolve_base_config(base_config))
    return base  # a diffusers folder or a cached hub id, with its own vae/config.json


def _require_vae_file(path: Path) -> None:
    info = inspect_checkpoint(path)
    if info.kind not in VAE_KINDS:
        raise ModelLoadError(
            f"VAE file {path} is {info.found}; needed: an SDXL VAE as .safetensors (LDM `encoder.down.*` / "
            "`decoder.up.*` or diffusers names) or a diffusers VAE folder / hub id, e.g. madebyollin/sdxl-vae-fp16-fix"
        )


def _not_this_vae(path: Path, why: str):
    return ModelLoadError(
        f"VAE file {path} does not fit the model's VAE configuration ({why}); needed: an SDXL VAE, "
        "e.g. sdxl_vae.safetensors or the folder of madebyollin/sdxl-vae-fp16-fix"
    )
