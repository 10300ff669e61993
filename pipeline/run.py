"""The one short loop that composes the stages:
table -> rows -> plan -> this process's share of what is not done -> batches -> model -> writer -> manifest."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from .config import Config, as_dict
from .determinism import plan_batches
from .exits import ExitCode
from .faults import fault_point
from .identity import Identity, environment, model_label, request_identity
from .lock import FolderLock, FolderLocked
from .logs import Log, utc_now
from .manifest import MANIFEST_JSONL, MANIFEST_PARQUET, PARTS, latest_records, merge, write_run_info
from .outcome import Failed, Flagged, Invalid, Outcome, Provenance, Rendered, manifest_record
from .records import Batch, Row, Status
from .resume import rows_to_do
from .schedulers import SCHEDULERS
from .sharding import Process, current_process, my_share
from .table import Table, TableError, load_table
from .writer import IMAGES, ManifestPart, PngSettings, remove_stale_temporaries, write_image


class TooManyFailures(RuntimeError):
    """More rows failed than --max-failures allows: the run stops instead of failing everywhere."""


@dataclass
class Summary:
    ok: int = 0
    flagged: int = 0  # written as fully transparent placeholders by the safety checker
    skipped: int = 0
    failed: int = 0
    invalid: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    manifest_written: bool = False
    unfinished_in_manifest: int = 0  # failed or invalid rows in the merged manifest
    launched: bool = False  # one of several processes of an accelerate/torchrun launch

    @property
    def images_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict:
        """The fields of the `summary` log event."""
        names = ("ok", "flagged", "skipped", "failed", "invalid", "interrupted")
        return {**{n: getattr(self, n) for n in names}, "seconds": round(self.seconds, 2),
                "images_per_second": round(self.images_per_second, 3), "manifest": self.manifest_written}  # fmt: skip

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.launched and not self.manifest_written:
            # The launcher ends every sibling when one process exits non-zero; the process that
            # merges the manifest (the last to finish) reports for the whole run.
            return ExitCode.OK
        return ExitCode.ROWS if self.failed or self.invalid or self.unfinished_in_manifest else ExitCode.OK


class Observer(Protocol):
    """Watches a run from outside (pipeline/watch.py reports it to webhooks, pings and metrics)."""

    def started(self, process: Process) -> None:
        """The folder lock is held: the run is this folder's now (called on every process of a launch)."""

    def planned(self, summary: Summary) -> None:
        """The run's live summary, whose counts grow as rows finish."""


@dataclass
class Job:
    """What one process does, decided before anything is written."""

    config: Config
    out_dir: Path
    process: Process
    log: Log
    batches: list[Batch]  # this process's share
    todo: set[str]  # keys of every row of the table that needs an image
    identity: Identity
    sources: object  # model.sources.Sources, resolved once
    latest: dict[str, dict]  # every row's latest record when the run started
    summary: Summary = field(default_factory=Summary)


def generate(config: Config, input_path: Path, out_dir: Path, shard=None, log: Log | None = None,
             observer: Observer | None = None) -> Summary:  # fmt: skip
    started = time.perf_counter()
    process = current_process(shard)
    log = log or Log(config.run.log_format)
    log.rank = process.rank
    # 1. read and validate the table; no model is loaded for a table that is refused
    table = load_table(input_path, config.defaults, config.run.limit)
    if not config.run.safety_checker:
        table = table.without_safety_checker()
    if config.run.strict and table.invalid:
        raise TableError("\n".join(e for row in table.invalid for e in row.errors) + "\n--strict: nothing was run")
    out_dir.mkdir(parents=True, exist_ok=True)
    # 2. one run per folder; 3. plan; 4. render; 5. merge
    with _folder_lock(out_dir, process, shard):
        if observer:
            observer.started(process)
        job = _plan(config, table, out_dir, process, log)
        if observer:
            observer.planned(job.summary)
        fault_point("planned")
        with ManifestPart(_part_path(out_dir, process)) as part, _stop_on_signals(log) as stop:
            _prepare_folder(job, table, input_path, part)
            if job.batches:
                _render(job, part, stop)
        _merge(job, table)
    summary = job.summary
    summary.seconds = time.perf_counter() - started
    log.event("summary", **summary.counts(), out=str(out_dir))
    return summary


@contextmanager
def _folder_lock(out_dir: Path, process: Process, shard):
    """The main process of a launch locks for all of its processes; shard jobs lock for themselves."""
    lock, refusal = None, None
    if process.is_main or not process.launched:
        try:
            lock = FolderLock(out_dir, shard)
        except FolderLocked as exc:
            refusal = str(exc)
    refusal = process.share_from_main(refusal)
    if refusal:
        raise FolderLocked(refusal)
    try:
        yield
    finally:
        if lock:
            lock.release()


def _plan(config: Config, table: Table, out_dir: Path, process: Process, log: Log) -> Job:
    """Batches on the whole table, then this process's share of those with rows not done."""
    from .model.sources import ensure_tiny_model, resolve_sources

    ensure_tiny_model(config.model)
    sources = resolve_sources(config.model, safety_checker=any(r.enable_safety_checker for r in table.rows))
    sources.raise_if_missing()
    identity = request_identity(config, sources)
    batches = plan_batches(table.rows, config.run.batch_size)
    latest = latest_records(out_dir)
    todo = {r.key for r in table.rows} if config.run.overwrite else rows_to_do(out_dir, batches, latest, identity)
    mine = my_share(batches, process, pending=lambda b: any(r.key in todo for r in b.rows))
    process.wait_for_peers()  # every process has read the folder before any writes to it
    summary = Summary(invalid=len(table.invalid), launched=process.launched)
    summary.skipped = sum(r.key not in todo for r in table.rows) if process.is_main else 0
    for row in table.invalid if process.is_main else ():
        log.event("invalid_row", row.error, id=row.key, row=row.number)
    log.event("plan", input=str(table.path), rows=table.total, invalid=len(table.invalid), to_do=len(todo),
              batches=len(mine), world_size=process.world_size)  # fmt: skip
    return Job(config, out_dir, process, log, mine, todo, identity, sources, latest, summary)


def _prepare_folder(job: Job, table: Table, input_path: Path, part: ManifestPart) -> None:
    out = job.out_dir
    (out / IMAGES).mkdir(exist_ok=True)
    remove_stale_temporaries(out / IMAGES)
    if job.batches:  # the old manifest would describe files this run replaces: it is rewritten at the end
        for name in (MANIFEST_JSONL, MANIFEST_PARQUET):
            (out / name).unlink(missing_ok=True)
    if not job.process.is_main:
        return
    info = {"input": str(Path(input_path).resolve()), "total_rows": table.total, "keys": table.keys,
            "config": as_dict(job.config), "started_at": utc_now()}  # fmt: skip
    write_run_info(out, info)
    fault_point("run_info_written")
    for row in table.invalid:
        record = manifest_record(row, Invalid(row.errors))
        if job.latest.get(row.key) != record:
            part.append(record)


def _render(job: Job, part: ManifestPart, stop: threading.Event) -> None:
    from .model import load_model, resolve_device

    config, log = job.config, job.log
    started = time.perf_counter()
    needs_checker = any(r.enable_safety_checker for b in job.batches for r in b.rows if r.key in job.todo)
    device = resolve_device(config.model.device, job.process.local_rank)
    model = load_model(config.model, device, safety_checker=needs_checker, sources=job.sources)
    log.event("model_loaded", seconds=round(time.perf_counter() - started, 2), device=str(model.device))
    fault_point("model_loaded")
    env = environment(model.device, model.dtype, config, job.process.world_size)
    provenance = Provenance(model.identity, env, job.process.rank)
    png = PngSettings(model_label(config), SCHEDULERS[config.model.scheduler], config.run.png_compress_level)
    writes: list[Future] = []
    total = sum(r.key in job.todo for b in job.batches for r in b.rows)
    with _writer(model.device) as writer, log.progress(total) as advance:
        for batch in job.batches:
            if stop.is_set():
                job.summary.interrupted = True
                log.event("interrupted", "stopped after the last finished batch; rerun to continue")
                break
            started = time.perf_counter()
            outcomes = _generate_batch(model, batch, config, log)
            fault_point("batch_generated")
            share = round((time.perf_counter() - started) / len(batch.rows), 4)
            _finish(writes)  # PNG encoding overlaps the next batch; at most one batch in flight
            writes = []
            for row, outcome in zip(batch.rows, outcomes, strict=True):
                if row.key not in job.todo:
                    continue
                if isinstance(outcome, Failed):
                    _record_failure(job, part, row, batch, outcome, provenance)
                    advance()
                    continue
                writes.append(writer.submit(_write_row, job, part, row, batch, outcome, share, provenance, png))
                writes[-1].add_done_callback(lambda _f: advance())
                job.summary.ok += 1
                job.summary.flagged += isinstance(outcome, Flagged)
            log.event("batch_done", batch=batch.index, rows=len(batch.rows), seconds=round(share * len(batch.rows), 3))
        _finish(writes)


def _finish(writes: list[Future]) -> None:
    for future in writes:
        future.result()
    if writes:
        fault_point("batch_recorded")


def _writer(device) -> Executor:
    """PNG encoding overlaps generation on an accelerator. On a CPU it would compete with torch for the
    same cores, which measured slower than writing in turn (tests/bench/RESULTS.md)."""
    return ThreadPoolExecutor(max_workers=1) if device.type != "cpu" else InlineExecutor()


class InlineExecutor(Executor):
    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def _generate_batch(model, batch: Batch, config: Config, log: Log) -> list[Outcome]:
    """One outcome per row; a failed batch is retried row by row once."""
    from .model import free_memory, generate_rgba, screen

    def attempt(rows) -> list[Outcome]:
        try:
            images = generate_rgba(model, rows, config.run.tta, config.run.decoder_sub_batch)
            images, flags = screen(model.safety_checker, rows, images)
            pairs = zip(images, flags, strict=True)
            return [Flagged(rgba) if flag else Rendered(rgba, checked=flag is False) for rgba, flag in pairs]
        except Exception as exc:  # e.g. out of memory: one bad batch must not end the run
            free_memory(model)
            return [Failed(f"{type(exc).__name__}: {exc}")] * len(rows)

    outcomes = attempt(batch.rows)
    if len(batch.rows) > 1 and isinstance(outcomes[0], Failed):
        log.event("batch_retry", outcomes[0].error, batch=batch.index, rows=len(batch.rows))
        outcomes = [attempt([row])[0] for row in batch.rows]
    return outcomes


def _record_failure(job: Job, part: ManifestPart, row: Row, batch: Batch, outcome: Failed, provenance) -> None:
    request = job.identity.request_hash(row)
    part.append(manifest_record(row, outcome, request_hash=request, batch=batch, provenance=provenance))
    job.summary.failed += 1
    job.log.event("row_failed", outcome.error, id=row.key, row=row.number)
    limit = job.config.run.max_failures
    if limit is not None and job.summary.failed > limit:
        raise TooManyFailures(f"{job.summary.failed} rows failed (--max-failures {limit}); last error: {outcome.error}")


def _write_row(job: Job, part, row: Row, batch: Batch, outcome, share: float, provenance, png: PngSettings) -> None:
    written = write_image(job.out_dir, row, outcome.rgba, png)
    fault_point("png_in_place")
    part.append(manifest_record(row, outcome, request_hash=job.identity.request_hash(row), batch=batch,
                                provenance=provenance, written=written, generation_seconds=share))  # fmt: skip


def _merge(job: Job, table: Table) -> None:
    """The process that sees every row finished writes the merged manifest."""
    if job.summary.interrupted:
        return
    records = merge(job.out_dir, table.keys)
    if records is not None:
        job.summary.manifest_written = True
        job.summary.unfinished_in_manifest = sum(r["status"] != Status.OK.value for r in records)


@contextmanager
def _stop_on_signals(log: Log):
    """SIGINT/SIGTERM ask for a stop after the current batch (said at once); a second SIGINT aborts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum, _frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not stop.is_set():
            log.event("stopping", f"{signal.Signals(signum).name}: finishing the current batch, then stopping "
                      "(its images are written; rerun to continue). Press Ctrl-C again to abort at once.")  # fmt: skip
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _part_path(out_dir: Path, process: Process) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return out_dir / PARTS / f"{stamp}-rank{process.rank:05d}-of-{process.world_size:05d}.jsonl"
