"""Dataset scale (`make bench-scale`): finished output folders of 10k, 100k and 1M rows, built synthetically,
and the commands that must stay O(rows) on them: time and peak memory of each, measured as whole processes.

A folder is what eight shard jobs leave: eight part logs with real records (the product's own record
builder, the request hashes the product computes) and every image in place as a hard link of one real
1024x1024 sprite PNG, so file sizes and counts are real while the disk holds one image. Nothing in the
normal path reads image bytes, so the links change no figure.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .common import HERE, REPO, machine, table, write_section

SIZES = (10_000, 100_000, 1_000_000)
SHARDS = 8


def tiny_png() -> bytes:
    """A 16x16 RGBA PNG: exports copy every image, so at a million rows the images must be small on disk."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 4), 200, np.uint8), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def sprite_png() -> bytes:
    """A 1024x1024 sprite (the benchmark set's textured one, level 6 with RLE: what `generate` writes)."""
    from .sprites import sprites

    buffer = io.BytesIO()
    Image.fromarray(sprites()[1], "RGBA").save(buffer, format="PNG", compress_level=6, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def write_config(work: Path) -> Path:
    """The tiny model's files (weights must be present for the request identity), 64x64, one step."""
    from pipeline.model import build_tiny_model

    tiny = build_tiny_model(work / "models" / "tiny")
    path = work / "scale.yaml"
    path.write_text(f"""model:
  base: {tiny / "sdxl"}
  layerdiffuse: {tiny / "layerdiffusion-v1"}
  safety_checker: {tiny / "safety-checker"}
  dtype: float32
  device: cpu
defaults:
  width: 64
  height: 64
  num_inference_steps: 1
  enable_safety_checker: false
run:
  batch_size: 4
""")
    return path


def write_table(folder: Path, rows: int) -> Path:
    path = folder / "table.csv"
    with path.open("w") as handle:
        handle.write("id,prompt,seed,category\n")
        for i in range(rows):
            handle.write(f"item-{i:07d},a small glass potion bottle number {i} with a cork,{i},cat{i % 7}\n")
    return path


def fabricate(folder: Path, table_path: Path, config_path: Path, png: bytes, done_every: int = 1) -> None:
    """A finished run of SHARDS shard jobs (rows whose position is a multiple of `done_every` are done)."""
    from pipeline.common.storage import Storage
    from pipeline.folder.layout import PARTS, image_url
    from pipeline.folder.manifest import write_keys
    from pipeline.folder.parts import part_line
    from pipeline.input.config import load_config
    from pipeline.input.rows import PARAM_COLUMNS
    from pipeline.input.table import load_table
    from pipeline.model.sources import resolve_sources
    from pipeline.plan.batches import Batch, batch_positions
    from pipeline.plan.identity import request_identity
    from pipeline.run.outcome import Provenance, Rendered, Written, manifest_record

    config = load_config(config_path)
    table = load_table(table_path, config.defaults)
    identity = request_identity(config, resolve_sources(config.model))
    valid = table.valid
    hashes = identity.request_hashes([valid.params[c] for c in PARAM_COLUMNS])
    batches = batch_positions(valid.signatures(), config.run.batch_size)
    storage = Storage(folder)
    write_keys(storage, table.keys, table.passthrough)
    links = Links(folder / "sprite.png", png)
    model = {"base": config.model.base, "injection": "attn", "scheduler": "euler", "dtype": "float32"}
    rgba = np.zeros((1, 1, 4), np.uint8)  # the outcome's pixels are not written here: the link is the image
    digest = hashlib.sha256(png).hexdigest()
    (folder / PARTS).mkdir(parents=True, exist_ok=True)
    for shard in range(SHARDS):
        stem = f"20260101T000000{shard:06d}Z-rank{shard:05d}-of-{SHARDS:05d}"
        context = {"model": model, "environment": {"device": "cpu", "world_size": SHARDS}, "rank": shard}
        (folder / PARTS / f"{stem}.context.json").write_text(json.dumps(context))
        with (folder / PARTS / f"{stem}.jsonl").open("w") as log:
            for index in range(shard, len(batches), SHARDS):
                batch = Batch(index, ())
                for position in batches[index]:
                    if position % done_every:
                        continue
                    row = valid.row(position)
                    url = image_url(row.place, row.key, config.run.images_per_folder)
                    target = folder / url
                    target.parent.mkdir(parents=True, exist_ok=True)
                    links.link(target)
                    image = {"url": url, "content_type": "image/png", "file_name": target.name,
                             "file_size": len(png), "width": 64, "height": 64}  # fmt: skip
                    written = Written(image, digest, 0.01)
                    record = manifest_record(row, Rendered(rgba), request_hash=hashes[position], batch=batch,
                                             provenance=Provenance(model, {}, shard), written=written)  # fmt: skip
                    log.write(part_line(record))


class Links:
    """Hard links of one file's content, a fresh copy every LINKS_PER_FILE links (ext4 allows 65,000 a file)."""

    LINKS_PER_FILE = 60_000

    def __init__(self, source: Path, data: bytes):
        self.source, self.data, self.count = source, data, 0

    def link(self, target: Path) -> None:
        if self.count % self.LINKS_PER_FILE == 0:
            self.copy = self.source.with_name(f"{self.source.stem}-{self.count // self.LINKS_PER_FILE}.png")
            self.copy.write_bytes(self.data)
        os.link(self.copy, target)
        self.count += 1


def link_thumbnails(out: Path, png: bytes) -> None:
    """What a first report build leaves: one thumbnail per image (hard links of one real thumbnail)."""
    import pyarrow.parquet as pq

    from pipeline.common.storage import Storage
    from pipeline.report.gallery import Thumbnails

    thumbs = Thumbnails(Storage(out), 192)
    links = None
    columns = ["id", "status", "image", "sha256"]
    for batch in pq.ParquetFile(out / "manifest.parquet").iter_batches(columns=columns):
        for record in batch.to_pylist():
            target = out / thumbs.name(record, record["sha256"])
            target.parent.mkdir(parents=True, exist_ok=True)
            if links is None:
                thumbs.make(record)
                links = Links(out / "thumbnail.png", target.read_bytes())
            else:
                links.link(target)


def measure(command: list[str], stop_at: str | None = None) -> dict:
    """Wall seconds and peak RSS of a whole process (and its bytes read); `stop_at`: kill it at that log event."""
    wrapped = ["/usr/bin/time", "-f", "%e %M", *command]
    started = time.perf_counter()
    process = subprocess.Popen(wrapped, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True)  # fmt: skip
    lines = []
    for line in process.stderr:
        lines.append(line)
        if stop_at and f'"event": "{stop_at}"' in line:
            seconds = time.perf_counter() - started
            os.killpg(process.pid, signal.SIGKILL)  # `time` and the command it runs
            process.wait()
            return {"seconds": round(seconds, 2), "rss_mb": None, "log": lines}
    process.wait()
    wall, rss = lines[-1].split()[-2:]
    return {"seconds": float(wall), "rss_mb": round(int(rss) / 1024), "code": process.returncode, "log": lines}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "pipeline", *map(str, args)]


def decide_cpu(folder: Path, newest: int) -> float:
    """CPU seconds the newest `newest` processes spent deciding what is pending (from their run statistics)."""
    stats = sorted((folder / "stats").glob("*.json"))[-newest:]
    return round(sum(json.loads(p.read_text())["seconds"].get("decide_cpu", 0.0) for p in stats), 2)


def run_size(work: Path, rows: int, config: Path, png: bytes) -> dict:
    folder = work / f"rows-{rows}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    table_path = write_table(folder, rows)
    started = time.perf_counter()
    out = folder / "out"
    fabricate(out, table_path, config, png)
    built = round(time.perf_counter() - started, 1)
    result = {"rows": rows, "build_s": built}
    result["validate"] = measure(cli("validate", table_path))
    result["merge"] = measure(cli("merge", out))
    common = ("--config", config, "--log-format", "json")
    result["generate_done"] = measure(cli("generate", table_path, "--out", out, *common))
    result["decide_cpu_1"] = decide_cpu(out, 1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    commands = [cli("generate", table_path, "--out", out, *common, "--shard", f"{i}/4") for i in range(4)]
    shards = [subprocess.Popen(c, cwd=REPO, stderr=subprocess.DEVNULL, env=env) for c in commands]
    for shard in shards:
        shard.wait()
    result["decide_cpu_4"] = decide_cpu(out, 4)
    result["status"] = measure(cli("status", out))
    if rows <= 10_000:
        result["report_first"] = measure(cli("report", out))
    else:
        link_thumbnails(out, png)
    result["report_cached"] = measure(cli("report", out))
    half = folder / "half"
    fabricate(half, table_path, config, png, done_every=2)
    result["generate_half"] = measure(cli("generate", table_path, "--out", half, *common), stop_at="batch_done")
    shutil.rmtree(half, ignore_errors=True)
    result["manifest_mb"] = round((out / "manifest.parquet").stat().st_size / 1e6, 1)
    shutil.rmtree(out, ignore_errors=True)
    result["exports"] = exports(folder, table_path, config, rows)
    shutil.rmtree(folder, ignore_errors=True)
    return result


def exports(folder: Path, table_path: Path, config: Path, rows: int) -> dict:
    """Each export format as its own process over a finished folder of 16x16 images (the export copies them)."""
    source = folder / "small"
    fabricate(source, table_path, config, tiny_png())
    assert measure(cli("merge", source))["code"] == 0
    results = {}
    for fmt in ("webdataset", "parquet", "imagefolder"):
        if fmt == "imagefolder" and rows > 100_000:
            continue  # a million small files: the layout, not the code, is what costs there
        dest = folder / f"export-{fmt}"
        results[fmt] = measure(cli("export", source, "--format", fmt, "--to", dest, "--shard-size", 10_000))
        shutil.rmtree(dest)
    shutil.rmtree(source)
    return results


def render(results: list[dict], png: bytes, seconds: float) -> str:
    def cell(entry):
        return "-" if entry is None else f"{entry['seconds']} s / {entry['rss_mb'] or '-'} MB"

    rows = [[f"{r['rows']:,}", cell(r["validate"]), cell(r["generate_done"]), cell(r["generate_half"]),
             cell(r["status"]), cell(r["merge"]), cell(r.get("report_first")), cell(r["report_cached"]),
             f"{r['decide_cpu_1']} / {r['decide_cpu_4']}"] for r in results]  # fmt: skip
    headers = ["rows", "validate", "generate, all done", "generate, half pending: to first batch", "status",
               "merge of 8 shards", "report, first build", "report, cached thumbnails",
               "decision CPU s: 1 process / 4 shards"]  # fmt: skip
    per_row = [f"{r['rows']:,}: {round(r['merge']['rss_mb'] * 1e3 / r['rows'], 2)} KB/row" for r in results]
    steps = zip(results, results[1:], strict=False)
    marginal = [f"{a['rows']:,} to {b['rows']:,}: {_added_per_row(a, b)} KB/row" for a, b in steps]
    formats = ("webdataset", "parquet", "imagefolder")
    export_rows = [[f"{r['rows']:,}", *(cell(r["exports"].get(f)) for f in formats)] for r in results]
    return f"""## Dataset scale (`make bench-scale`)

{machine()}; {seconds:.0f} s in all. Synthetic finished folders ({SHARDS} shard logs with real records,
numbered image folders, every image a hard link of one {len(png) / 1024:.0f} KiB 1024x1024 sprite PNG, a copy
per 60,000 links). Each cell: wall time of the whole command (Python start-up and imports included) / its peak
resident memory.

{table(headers, rows)}

Exports of the same folders (16x16 images, which exports copy; shard size 10,000), each its own process:

{table(["rows", *formats], export_rows)}

Peak memory of `merge` per row: {", ".join(per_row)}; what each further row adds (from one size to the
next, the interpreter and libraries left out): {", ".join(marginal) or "-"}. "generate, half pending" stops at
the first finished batch (tiny model, 64x64, one step). The report's first build makes every thumbnail
(measured at 10k rows; it grows linearly: one listing per thumbnail folder, thumbnails made in parallel); later
builds only list.
"""


def _added_per_row(smaller: dict, larger: dict) -> float:
    added = larger["merge"]["rss_mb"] - smaller["merge"]["rss_mb"]
    return round(added * 1e3 / (larger["rows"] - smaller["rows"]), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "layerdiffuse-scale")
    args = parser.parse_args()
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    config = write_config(args.work)
    png = sprite_png()
    results = []
    for rows in args.sizes:
        results.append(run_size(args.work, rows, config, png))
        print(json.dumps({k: (v if not isinstance(v, dict) else {x: y for x, y in v.items() if x != "log"})
                          for k, v in results[-1].items()}), flush=True)  # fmt: skip
    write_section("Dataset scale", render(results, png, time.perf_counter() - started))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
