"""PNG encoding with prompt metadata, and where each image goes; files appear whole (storage.py)."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

from ..common.storage import Storage
from ..input.rows import Row
from ..input.schedulers import Scheduler
from .outcome import Written


@dataclass(frozen=True)
class PngSettings:
    """What every PNG of a run says about how it was made, and how hard it is compressed."""

    model: str  # short model label
    scheduler: Scheduler
    compress_level: int = 6  # 0-9; zlib's strategy follows from it (`png_strategy`)
    # AUTOMATIC1111's `Model hash`, `Model`, `VAE hash`, `VAE` (name, value) pairs; empty: `Model: <model>`
    model_fields: tuple[tuple[str, str], ...] = ()


def png_strategy(level: int) -> int:
    """zlib's RLE strategy below level 9: on sprite-like images 4.5x faster than level 6 and 3% smaller (it
    ignores the level, so 1-8 give the same file); 9 keeps the full search (6% smaller, ~60x slower).
    Measured in tests/bench/RESULTS.md ("PNG encoders")."""
    return zlib.Z_RLE if level < 9 else zlib.Z_DEFAULT_STRATEGY


def a1111_model_fields(sources, label: str) -> tuple[tuple[str, str], ...]:
    """`Model hash: …, Model: <file stem>` for a single-file checkpoint (else `Model: <label>`), then
    `VAE hash: …, VAE: <file>` for a VAE file (`VAE: <name>` for a folder or hub id)."""
    from pathlib import Path

    from ..model.provenance import a1111_fields

    model_file = sources.base if Path(sources.base).is_file() else None
    vae_file = sources.vae if sources.vae and Path(sources.vae).is_file() else None
    fields = a1111_fields(model_file=model_file, vae_file=vae_file)
    if model_file is None:
        fields.insert(0, ("Model", label))
    if sources.vae and vae_file is None:
        fields.append(("VAE", Path(sources.vae.rstrip("/")).name))
    return tuple(fields)


def encode_png(rgba, row: Row, png: PngSettings, loras: Sequence = ()) -> bytes:
    """RGBA (or RGB: the layer modes' blends and backgrounds) PNG bytes; deterministic for the same pixels,
    row and settings (no timestamps inside). `loras`: the `ResolvedLora`s the row ran with."""
    info = PngImagePlugin.PngInfo()
    height, width = rgba.shape[:2]
    info.add_text("parameters", a1111_parameters(row, png, width, height, loras))
    for name, value in {**row.params(), **_used_settings(row)}.items():  # a plain row's: what they always were
        info.add_text(name, str(value))
    info.add_text("model", png.model)
    for name in ("template", "negative_template"):
        if getattr(row, name) is not None:
            info.add_text(name, getattr(row, name))
    buffer = io.BytesIO()
    mode = "RGBA" if rgba.shape[-1] == 4 else "RGB"
    Image.fromarray(rgba, mode=mode).save(buffer, format="PNG", pnginfo=info, compress_level=png.compress_level,
                                          compress_type=png_strategy(png.compress_level))  # fmt: skip
    return buffer.getvalue()


def _used_settings(row: Row) -> dict:
    """The img2img / hires / layer-mode values a row used, without its input images' locations (the manifest
    has them): the same table and inputs give the same bytes wherever they are."""
    images = row.images()
    return {name: value for name, value in row.inputs().items() if name not in images}


def a1111_parameters(row: Row, png: PngSettings, width: int, height: int, loras: Sequence = ()) -> str:
    """The `parameters` text that AUTOMATIC1111-style readers and galleries show, in its field order; LoRAs
    as it writes them: `<lora:name:weight>` tags on the prompt line and `Lora hashes` (the `prompt` text
    chunk stays the row's own prompt)."""
    from ..model.provenance import a1111_fields, format_fields, lora_prompt_tags

    sampler = f"Sampler: {png.scheduler.sampler}, "
    if png.scheduler.schedule_type:
        sampler += f"Schedule type: {png.scheduler.schedule_type}, "
    prompt = f"{row.prompt} {lora_prompt_tags(loras)}" if loras else row.prompt
    model = format_fields([*(png.model_fields or [("Model", png.model)]), *a1111_fields(loras=loras)])
    # The Dynamic Prompts extension's fields: the prompt above is the one drawn from the template.
    fields = (("Template", row.template), ("Negative Template", row.negative_template))
    templates = "".join(f", {label}: {_quoted(text)}" for label, text in fields if text is not None)
    if row.hires_scale is not None:  # AUTOMATIC1111 writes the first pass's size with the upscale factor
        width, height = row.width, row.height
    return (
        f"{prompt}\nNegative prompt: {row.negative_prompt}\n"
        f"Steps: {row.num_inference_steps}, {sampler}CFG scale: {row.guidance_scale:g}, "
        f"Seed: {row.seed}, Size: {width}x{height}, {model}{_denoising(row)}, Transparency: LayerDiffuse{templates}"
        f"{_layer_mode(row)}"
    )


def _denoising(row: Row) -> str:
    """img2img and hires as AUTOMATIC1111 writes them: `Denoising strength` is img2img's strength, or the hires
    pass's in a text-to-image run; both used (img2img, then hires): the hires one follows on its own."""
    fields = []
    if row.strength is not None:
        fields.append(f"Denoising strength: {row.strength:g}")
    if row.hires_scale is not None:
        label = "Hires denoising strength" if row.strength is not None else "Denoising strength"
        fields += [f"{label}: {row.hires_strength:g}", f"Hires upscale: {row.hires_scale:g}",
                   "Hires upscaler: Bicubic (premultiplied RGBA)"]  # fmt: skip
    return "".join(f", {field}" for field in fields)


def _layer_mode(row: Row) -> str:
    return f", Layer mode: {row.mode}" if row.mode != "fg" else ""


def _quoted(text: str) -> str:
    """A value as AUTOMATIC1111 writes one into `parameters`: JSON-quoted when it has `,`, `:` or a newline."""
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def write_image(storage: Storage, url: str, row: Row, rgba, png: PngSettings, loras: Sequence = ()) -> Written:
    """Encode and write the image atomically; returns what the manifest records about it."""
    started = time.perf_counter()
    data = encode_png(rgba, row, png, loras)
    encoded = time.perf_counter()
    storage.write(url, data, moment="png_temp_written")
    height, width = rgba.shape[:2]
    name = url.rsplit("/", 1)[-1]
    image = {"url": url, "content_type": "image/png", "file_name": name, "file_size": len(data),
             "width": width, "height": height}  # fmt: skip
    finished = time.perf_counter()
    return Written(image, hashlib.sha256(data).hexdigest(), round(finished - started, 4), round(encoded - started, 4))
