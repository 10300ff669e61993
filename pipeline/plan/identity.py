"""What decides a row's pixels (its request identity), and the environment it ran in.

A row's request hash covers its own parameters and the run settings that change pixels, with weights
identified by their content: moving a model folder, copying a checkpoint or changing the batch size does
not redo finished rows; changing a weight file, the scheduler or tiling does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from itertools import repeat
from pathlib import Path

from ..common.fingerprint import sha256_file, sha256_folder
from ..input.config import Config, Defaults
from ..input.rows import PARAM_COLUMNS, Row
from .inputs import InputFile, usage_key

assert PARAM_COLUMNS[-1] == "enable_safety_checker"  # request_hashes takes it apart from the hashed values
# Every setting of the run configuration is in exactly one of these groups (a test walks the config).
REDO = {  # changing one redoes the rows it touches
    "model.base": "the base model's weights (by content)",
    "model.base_config": "the configuration a single-file checkpoint is built with",
    "model.variant": "which weight files of a diffusers folder load (e.g. fp16)",
    "model.vae": "the VAE override's weights (by content)",
    "model.loras": "the run's LoRAs (each file's content and weight; a row's own `loras` count alike)",
    "model.layerdiffuse": "where the LayerDiffuse files are (their content counts, not the place)",
    "model.unet_weights": "the LayerDiffuse UNet patch (by content)",
    "model.decoder_weights": "the transparent decoder (by content)",
    "model.encoder_weights": "the transparent encoder (by content; only rows with an image or hires)",
    "model.conditional_weights": "the layer models (by content; only rows of the modes that run them)",
    "model.injection": "attn or conv LayerDiffuse patch",
    "model.strength": "how strongly the patch is applied",
    "model.scheduler": "the sampler",
    "model.dtype": "the precision the model runs in",
    "model.vae_tiling": "tiled VAE decoding",
    "model.safety_checker": "the checker's weights (only for rows with enable_safety_checker)",
    "run.tta": "the decoder's 8-view test-time augmentation",
}
ROW_LEVEL = {  # resolved into each row's own parameters, which its hash covers
    **{f"defaults.{f.name}": "the default for rows without a value" for f in fields(Defaults)},
    "run.safety_checker": "turns enable_safety_checker off in every row",
    "templates.combinatorial": "which prompts (and image keys) a template row gives",
    "templates.wildcards": "the words a template draws from; the drawn prompt is what the hash covers",
    "templates.combination_limit": "which template rows are refused",
}
LOW_BITS = {  # may move the lowest bits of some pixels (other kernels or summation order); not redone
    "model.device": "another device computes the same images up to rounding",
    "model.compile": "compiled kernels",
    "model.channels_last": "NHWC convolutions",
    "run.batch_size": "batched kernels",
    "run.decoder_sub_batch": "batched decoder views",
}
NEUTRAL = {  # never change pixels
    "model.build_tiny_if_missing": "builds the tiny model where it is missing",
    "run.png_compress_level": "file size only; the pixels are lossless",
    "run.writer_threads": "how many threads check, encode and write images; records keep their order",
    "run.images_per_folder": "where new images are filed",
    "run.limit": "which rows run",
    "run.max_failures": "when a failing run stops",
    "run.overwrite": "redo rows that are done",
    "run.strict": "refuse tables with invalid rows",
    "run.log_format": "how the log looks",
    "run.executor": "where the shards run; a row's batch-mates do not depend on it",
    "run.ray_address": "which Ray cluster",
    "run.tasks": "how many shards",
    "run.gpus_per_task": "how shards share GPUs",
    # Sprites are derived from the raw canvas after it is written; changing them re-derives files, no model runs.
    "sprites.trim": "post-processing of the written canvas",
    "sprites.alpha_threshold": "post-processing of the written canvas",
    "sprites.pad": "post-processing of the written canvas",
    "sprites.square": "post-processing of the written canvas",
    "sprites.pot": "post-processing of the written canvas",
    "sprites.sizes": "post-processing of the written canvas",
    "sprites.bleed": "post-processing of the written canvas",
    "sprites.premultiplied": "post-processing of the written canvas",
}


@dataclass(frozen=True)
class Identity:
    """The run settings and weight digests shared by every row, and the safety checker's digest."""

    settings: dict
    checker: str | None = None
    layer_weights: dict = field(default_factory=dict)  # "encoder" / mode -> digest, for the rows that use them

    @functools.cached_property
    def _prefixes(self) -> tuple[str, str]:
        """Per row, only its parameters are serialized: a million rows hash in about a second."""
        run = json.dumps(self.settings, sort_keys=True, default=str)
        checked = json.dumps({"run": self.settings, "checker": self.checker}, sort_keys=True, default=str)
        return run, checked

    def request_hash(self, row: Row, loras: str = "", files: Mapping[str, InputFile] | None = None) -> str:
        """`loras`: the key of the row's LoRA set (`LoraSet.key`); `files`: its input images (`InputFiles.of`)."""
        usage = [self.usage(row, files or {})]
        columns = [[value] for value in row.params().values()]
        return self.request_hashes(columns, [loras] if loras else None, usage if usage[0] else None)[0]

    def usage(self, row: Row, files: Mapping[str, InputFile]) -> str:
        """The row's img2img / hires / layer-mode part of its request ("" for a plain row)."""
        return usage_key(row, files, self.layer_weights)

    def request_hashes(self, columns: list[list], loras: list[str] | None = None,
                       usages: list[str] | None = None) -> list[str]:  # fmt: skip
        """One hash per row from its PARAM_COLUMNS values, column by column (a million rows in seconds).

        `loras`: per row, its LoRA set's key ("" for none), or None when no row has one; `usages`: per row,
        `usage` ("" for none), or None. A row without either hashes as it did before they existed, so their
        arrival redoes nothing."""
        prefixes = self._prefixes
        rows = zip(*columns, strict=True)
        tails = repeat("") if loras is None else ("\x1e" + key if key else "" for key in loras)
        uses = repeat("") if usages is None else ("\x1e\x1d" + use if use else "" for use in usages)
        hashes = []
        for (*params, checked), tail, use in zip(rows, tails, uses, strict=False):
            # Valid cells hold no control characters, so the unit separator keeps the fields apart.
            text = prefixes[checked] + "\x1e" + "\x1f".join(map(str, params)) + tail + use
            hashes.append(hashlib.sha256(text.encode()).hexdigest())
        return hashes


def request_identity(config: Config, sources) -> Identity:
    """`sources`: the resolved `model.sources.Sources` (local paths, or hub ids with their revision)."""
    m = config.model
    single_file = Path(sources.base).is_file()
    settings = {
        "base": _digest(sources.base, sources, m.variant),
        "base_config": _digest(m.base_config, sources) if m.base_config and single_file else None,
        "variant": m.variant,
        "vae": _digest(sources.vae, sources) if sources.vae else None,
        "unet_weights": _digest(sources.unet_weights, sources),
        "decoder_weights": _digest(sources.decoder_weights, sources),
        **{name: getattr(m, name) for name in ("injection", "strength", "scheduler", "dtype", "vae_tiling")},
        "tta": config.run.tta,
    }
    checker = _digest(sources.safety_checker, sources) if sources.safety_checker else None
    layer = {mode: _digest(path, sources) for mode, path in getattr(sources, "conditional_weights", {}).items()}
    if getattr(sources, "encoder_weights", None):
        layer["encoder"] = _digest(sources.encoder_weights, sources)
    return Identity(settings, checker, layer)


def _digest(source: str, sources, variant: str | None = None) -> str:
    """sha256 of a file or folder's content; a hub repo by its cached snapshot's commit."""
    path = Path(source).expanduser()
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        return sha256_folder(path, variant)
    return f"{source}@{sources.revisions.get(source, 'unresolved')}"


def model_label(config: Config) -> str:
    """Short model name for PNG metadata, e.g. `stable-diffusion-xl-base-1.0 + LayerDiffuse attn`."""
    base = config.model.base.rstrip("/").split("/")[-1]
    return f"{base} + LayerDiffuse {config.model.injection}"


def weights_provenance(sources, base_config: str | None) -> dict:
    """For the manifest's `model`: a single-file checkpoint's and VAE's SHA-256 and AUTOMATIC1111 hashes
    (a folder or hub id is identified by its content in the request hash; it has no A1111 hash)."""
    from ..model.provenance import model_identity, vae_identity

    record = {}
    if Path(sources.base).is_file():
        base = model_identity(sources.base, base_config)
        record.update(base_config=base["base_config"], base_sha256=base["sha256"], model_hash=base["model_hash"])
    if sources.vae and Path(sources.vae).is_file():
        vae = vae_identity(sources.vae)
        record.update(vae_sha256=vae["sha256"], vae_hash=vae["vae_hash"])
    return record


def environment(device, device_name: str, dtype, config: Config, world_size: int) -> dict:
    import accelerate
    import diffusers
    import torch
    import transformers

    from ..model.generation import default_sub_batch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "device": str(device),
        "device_name": device_name,
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": config.run.batch_size,
        "tta": config.run.tta,
        "decoder_sub_batch": config.run.decoder_sub_batch or default_sub_batch(device),
        "cpu_threads": torch.get_num_threads(),  # CPU results depend on it (reduction order)
        "host": socket.gethostname(),
        "world_size": world_size,
    }
