"""The one short loop that composes the stages:
table -> rows -> batches -> (this process's share of what is not done) -> model -> PNGs -> manifest."""

from __future__ import annotations

import platform
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .config import Config, as_dict
from .determinism import plan_batches
from .logs import Log, utc_now
from .manifest import PARTS, invalid_record, latest_records, merge, write_run_info
from .records import STATUS_FAILED, STATUS_OK, Batch, Row
from .resume import request_hash, rows_to_do
from .sharding import Process, current_process, my_share
from .table import Table, TableError, load_table
from .writer import IMAGES, ManifestPart, encode_png, remove_stale_temporaries, write_image

EXIT_OK, EXIT_ROWS, EXIT_USAGE, EXIT_MODEL = 0, 3, 2, 4


@dataclass
class Summary:
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    invalid: int = 0
    seconds: float = 0.0
    manifest_written: bool = False
    unfinished_in_manifest: int = 0  # failed or invalid rows in the merged manifest
    launched: bool = False  # one of several processes of an accelerate/torchrun launch

    @property
    def images_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.launched and not self.manifest_written:
            # The launcher ends every sibling when one process exits non-zero; the process that
            # merges the manifest (the last to finish) reports for the whole run.
            return EXIT_OK
        return EXIT_ROWS if self.failed or self.invalid or self.unfinished_in_manifest else EXIT_OK


def generate(config: Config, input_path: Path, out_dir: Path, shard=None, log: Log | None = None) -> Summary:
    started, started_at = time.perf_counter(), time.time()
    process = current_process(shard)
    log = log or Log(config.run.log_format)
    log.rank = process.rank
    # 1. read and validate the table; no model is loaded for a table that is refused
    table = load_table(input_path, config.defaults, config.run.limit)
    if config.run.strict and table.invalid:
        raise TableError("\n".join(e for row in table.invalid for e in row.errors) + "\n--strict: nothing was run")
    summary = Summary(invalid=len(table.invalid), launched=process.launched)
    for row in table.invalid if process.is_main else ():
        log.event("invalid_row", row.error, id=row.key, row=row.number)
    # 2. plan batches on the whole table, then keep this process's share of what is not done
    (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    identity = request_identity(config)
    batches = plan_batches(table.rows, config.run.batch_size)
    latest = latest_records(out_dir)
    todo = {r.key for r in table.rows} if config.run.overwrite else rows_to_do(out_dir, batches, latest, identity)
    mine = my_share(batches, process, pending=lambda b: any(r.key in todo for r in b.rows))
    process.wait_for_peers()  # every process has read the folder before any writes to it
    summary.skipped = sum(1 for r in table.rows if r.key not in todo) if process.is_main else 0
    log.event("plan", input=str(input_path), rows=table.total, invalid=len(table.invalid), to_do=len(todo),
              batches=len(mine), rank=process.rank, world_size=process.world_size)  # fmt: skip
    # 3. render and write
    with ManifestPart(_part_path(out_dir, process)) as part:
        if process.is_main:
            remove_stale_temporaries(out_dir / IMAGES, older_than=started_at)
            _write_run_info(out_dir, input_path, table, config)
            for row in table.invalid:
                if latest.get(row.key) != invalid_record(row):
                    part.append(invalid_record(row))
        if mine:
            _render(config, mine, todo, out_dir, part, process, identity, log, summary)
    # 4. the process that sees every row finished writes the merged manifest
    records = merge(out_dir, table.keys)
    if records is not None:
        summary.manifest_written = True
        summary.unfinished_in_manifest = sum(r["status"] != STATUS_OK for r in records)
    summary.seconds = time.perf_counter() - started
    log.event("summary", ok=summary.ok, skipped=summary.skipped, failed=summary.failed, invalid=summary.invalid,
              seconds=round(summary.seconds, 2), images_per_second=round(summary.images_per_second, 3),
              manifest=summary.manifest_written, out=str(out_dir))  # fmt: skip
    return summary


def _render(config, batches, todo, out_dir, part, process, identity, log, summary) -> None:
    from .model import generate_rgba, load_model, resolve_device

    load_started = time.perf_counter()
    model = load_model(config.model, resolve_device(config.model.device, process.local_rank))
    log.event("model_loaded", seconds=round(time.perf_counter() - load_started, 2), device=str(model.device))
    context = {"model": model.identity, "environment": environment(model, process, config), "rank": process.rank}
    label = model_label(config)
    pending: list[Future] = []
    total = sum(1 for b in batches for r in b.rows if r.key in todo)
    with ThreadPoolExecutor(max_workers=1) as writer, log.progress(total) as advance:
        for batch in batches:
            started = time.perf_counter()
            try:
                images = generate_rgba(model, batch.rows, config.run.tta, config.run.decoder_sub_batch)
                error = None
            except Exception as exc:  # one bad batch must not end the run; its rows are recorded as failed
                images, error = None, f"{type(exc).__name__}: {exc}"
            share = (time.perf_counter() - started) / len(batch.rows)
            for future in pending:  # PNG encoding overlaps the next batch; at most one batch in flight
                future.result()
            pending = []
            for i, row in enumerate(batch.rows):
                if row.key not in todo:
                    continue
                if error:
                    part.append(_failed(row, batch, error, context, identity))
                    summary.failed += 1
                    log.event("row_failed", error, id=row.key, row=row.number)
                    advance()
                    continue
                job = (out_dir, row, batch, images[i], share, label, context, identity, config.run.png_compress_level)
                pending.append(writer.submit(_write_row, part, *job))
                pending[-1].add_done_callback(lambda _f: advance())
                summary.ok += 1
            log.event("batch_done", batch=batch.index, rows=len(batch.rows), seconds=round(share * len(batch.rows), 3))
        for future in pending:
            future.result()


def _write_row(part, out_dir, row: Row, batch: Batch, rgba, share, label, context, identity, level) -> None:
    started = time.perf_counter()
    png = encode_png(rgba, row, label, level)
    written = write_image(out_dir, row, png)
    record = _base_record(row, batch, context, identity)
    record.update(written, status=STATUS_OK, generation_seconds=round(share, 4))
    record["write_seconds"] = round(time.perf_counter() - started, 4)
    part.append(record)


def _failed(row: Row, batch: Batch, error: str, context: dict, identity: dict) -> dict:
    record = _base_record(row, batch, context, identity)
    record.update(status=STATUS_FAILED, error=error)
    return record


def _base_record(row: Row, batch: Batch, context: dict, identity: dict) -> dict:
    return {
        **row.extra,
        "id": row.key,
        "row": row.number,
        "status": None,
        "error": None,
        **row.params(),
        "has_nsfw_concepts": None,
        "image": None,
        "sha256": None,
        "request_hash": request_hash(row, identity),
        "batch_index": batch.index,
        "batch_size": len(batch.rows),
        "generation_seconds": None,
        "write_seconds": None,
        "finished_at": utc_now(),
        **context,
    }


def request_identity(config: Config) -> dict:
    """The settings besides a row's own that decide its pixels (see resume.request_hash)."""
    m = config.model
    return {
        "base": m.base,
        "variant": m.variant,
        "vae": m.vae,
        "layerdiffuse": m.layerdiffuse,
        "unet_weights": m.unet_weights_file,
        "decoder_weights": m.decoder_weights,
        "injection": m.injection,
        "strength": m.strength,
        "scheduler": m.scheduler,
        "dtype": m.dtype,
        "tta": config.run.tta,
        "batch_size": config.run.batch_size,
    }


def model_label(config: Config) -> str:
    base = config.model.base.rstrip("/").split("/")[-1]
    return f"{base} + LayerDiffuse {config.model.injection}"


def environment(model, process: Process, config: Config) -> dict:
    import accelerate
    import diffusers
    import torch
    import transformers

    device = model.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "device": str(device),
        "device_name": name,
        "dtype": str(model.dtype).removeprefix("torch."),
        "batch_size": config.run.batch_size,
        "tta": config.run.tta,
        "cpu_threads": torch.get_num_threads(),  # CPU results depend on it (reduction order)
        "host": socket.gethostname(),
        "world_size": process.world_size,
    }


def _part_path(out_dir: Path, process: Process) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return out_dir / PARTS / f"{stamp}-rank{process.rank:05d}-of-{process.world_size:05d}.jsonl"


def _write_run_info(out_dir: Path, input_path: Path, table: Table, config: Config) -> None:
    info = {
        "input": str(Path(input_path).resolve()),
        "total_rows": table.total,
        "keys": table.keys,
        "config": as_dict(config),
        "started_at": utc_now(),
    }
    write_run_info(out_dir, info)
