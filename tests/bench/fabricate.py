"""A finished output folder of any size without running a model, for the scale benchmarks.

Images are hard links to a few distinct PNGs, so 10^5-10^6 rows cost little disk and time; the manifest has
the fields and types `generate` writes (README "Outputs"), one row group as `generate` writes it, and every
row's sha256 matches its file. Some rows are failed (no image) and some flagged (a transparent placeholder).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL = {"base": "models/tiny/sdxl", "vae": None, "injection": "attn", "strength": 1.0, "scheduler": "euler",
         "dtype": "float16", "vae_dtype": "float32", "safety_checker": "CompVis/safety-checker"}  # fmt: skip
ENVIRONMENT = {"python": "3.11.7", "torch": "2.13.0", "diffusers": "0.42.1", "device": "cuda", "dtype": "float16",
               "batch_size": 4, "tta": True, "cpu_threads": 16, "host": "bench", "world_size": 8}  # fmt: skip


@dataclass(frozen=True)
class Png:
    path: Path
    sha256: str
    size: int


def fabricate_output_folder(folder: str | os.PathLike, rows: int, side: int = 64, distinct: int = 16,
                            failed_every: int = 50, flagged_every: int = 100, seed: int = 0) -> Path:  # fmt: skip
    """Write `folder`/images/*.png (hard links), manifest.parquet and run.json for `rows` rows of side x side."""
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True)
    pool = [_write_png(images / f".pool-{i}.png", _noise(side, seed + i)) for i in range(distinct)]
    placeholder = _write_png(images / ".pool-placeholder.png", np.zeros((side, side, 4), np.uint8))
    statuses = [_status(i, failed_every, flagged_every) for i in range(rows)]
    files = [None if s == "failed" else placeholder if s == "flagged" else pool[i % distinct]
             for i, s in enumerate(statuses)]  # fmt: skip
    for i, png in enumerate(files):
        if png is not None:
            os.link(png.path, images / f"{_key(i)}.png")
    _write_manifest(folder, statuses, files, side)
    keys = [_key(i) for i in range(rows)]
    (folder / "run.json").write_text(json.dumps({"input": "fabricated", "total_rows": rows, "keys": keys}))
    return folder


def _status(i: int, failed_every: int, flagged_every: int) -> str:
    if failed_every and i % failed_every == failed_every - 1:
        return "failed"
    return "flagged" if flagged_every and i % flagged_every == 1 else "ok"


def _key(i: int) -> str:
    return f"sprite.{i:07d}"  # with a dot, as real ids may have


def _noise(side: int, seed: int) -> np.ndarray:
    """Incompressible pixels with a real alpha ramp: the PNG is as large as a sprite of that size gets."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 4), dtype=np.uint8)
    pixels[..., 3] = np.linspace(0, 255, side, dtype=np.uint8)[None, :]
    return pixels


def _write_png(path: Path, pixels: np.ndarray) -> Png:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    path.write_bytes(data)
    return Png(path, hashlib.sha256(data).hexdigest(), len(data))


def _write_manifest(folder: Path, statuses: list[str], files: list[Png | None], side: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(statuses)
    ok = [s != "failed" for s in statuses]
    image = pa.array([{"url": f"images/{_key(i)}.png", "content_type": "image/png", "file_name": f"{_key(i)}.png",
                       "file_size": f.size, "width": side, "height": side} if f else None
                      for i, f in enumerate(files)])  # fmt: skip
    columns = {
        "id": [_key(i) for i in range(n)],
        "row": list(range(1, n + 1)),
        "status": ["failed" if s == "failed" else "ok" for s in statuses],
        "error": [None if good else "RuntimeError: CUDA out of memory" for good in ok],
        "prompt": [f"a game sprite, number {i}, transparent background" for i in range(n)],
        "negative_prompt": ["text, watermark"] * n,
        "seed": list(range(n)),
        "guidance_scale": [8.0] * n,
        "num_inference_steps": [20] * n,
        "width": [side] * n,
        "height": [side] * n,
        "enable_safety_checker": [True] * n,
        "has_nsfw_concepts": [None if s == "failed" else s == "flagged" for s in statuses],
        "image": image,
        "sha256": [f.sha256 if f else None for f in files],
        "request_hash": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)],
        "batch_index": [i // 4 for i in range(n)],
        "batch_size": [4] * n,
        "generation_seconds": [1.5] * n,
        "write_seconds": [0.01] * n,
        "finished_at": ["2026-01-01T00:00:00.000Z"] * n,
        "rank": [i % 8 for i in range(n)],
        "model": pa.repeat(pa.scalar(MODEL), n),
        "environment": pa.repeat(pa.scalar(ENVIRONMENT), n),
    }
    pq.write_table(pa.table(columns), folder / "manifest.parquet")  # default: one row group up to 1Mi rows
