"""The one short loop that composes the stages: table -> rows -> plan -> this process's share of what is not
done -> batches -> model -> post-processing (safety check, PNG writes, sprites, records) -> manifest."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..common.clock import utc_now
from ..common.faults import fault_point
from ..common.logs import Log
from ..common.storage import Storage, display
from ..folder.layout import MANIFEST_JSONL, MANIFEST_PARQUET, part_stem, stats_file
from ..folder.lock import lock_folder
from ..folder.manifest import STATE_COLUMNS, folder_state, merge, write_keys, write_run_info
from ..folder.parts import PartWriter
from ..folder.schema import RESERVED_COLUMNS
from ..folder.sweep import sweep_temporaries
from ..input.config import Config, as_dict
from ..input.rows import PARAM_COLUMNS
from ..input.schedulers import SCHEDULERS
from ..input.table import Table, TableError, load_table
from ..plan.batches import Batch, batch_positions
from ..plan.identity import Identity, environment, model_label, request_identity, weights_provenance
from ..plan.inputs import InputFiles, needs
from ..plan.lora_sets import NO_LORAS, RowLoraSets, plan_lora_sets
from ..plan.pending import decide
from ..plan.sharding import Process, candidates, current_process, my_share
from ..sprites.files import sprite_plan
from ..sprites.sheets import drop_atlases
from .outcome import Failed, Invalid, Outcome, Provenance, Skipped, manifest_record
from .png import PngSettings, a1111_model_fields
from .postprocess import PostContext, PostProcessor, writer_threads
from .postprocess import TooManyFailures as TooManyFailures  # the CLI takes a run's errors from here
from .renderer import ModelRenderer, Renderer, RendererFactory, RenderSetup
from .signals import stop_on_signals
from .summary import Observer, StageTimes, Summary


@dataclass(frozen=True)
class Task:
    """One shard of a run: batches `index`, `index + count`, ... of the whole table (`--shard I/N`)."""

    index: int = 0
    count: int = 1


@dataclass(frozen=True)
class Duties:
    """What a task's process does besides its rows; an executor that holds the folder and merges for all of
    its tasks (a cluster driver) turns both off."""

    hold_folder: bool = True  # take the folder's lock and the stop signals
    merge: bool = True  # merge the manifest when this process sees every row finished


@dataclass(frozen=True)
class RunRequest:
    """A `generate` run, as every executor gets it."""

    config: Config
    input_path: str | Path
    out: str | Path
    verify: bool = False  # re-hash finished images and redo those whose content changed
    log_format: str | None = None  # None: the config's
    renderers: RendererFactory = ModelRenderer


@dataclass
class Job:
    """What one process does, decided before anything is written."""

    config: Config
    storage: Storage
    process: Process
    log: Log
    batches: list[Batch]  # this process's share
    todo: set[str]  # keys of this process's rows that need an image
    places: dict[str, str]  # where a redone row's image already is (its recorded url)
    identity: Identity
    sources: object  # model.sources.Sources, resolved once
    summary: Summary = field(default_factory=Summary)
    restyle: set[str] = field(default_factory=set)  # keys of done images whose sprites are derived again
    old_sprites: dict[str, list] = field(default_factory=dict)  # recorded sprites of images to redo
    times: StageTimes = field(default_factory=StageTimes)  # for the run statistics
    loras: RowLoraSets = field(default_factory=lambda: RowLoraSets(NO_LORAS))  # each row's LoRA set

    def post_context(self) -> PostContext:
        run = self.config.run
        return PostContext(self.storage, self.identity, self.places, run.images_per_folder, self.config.sprites,
                           self.old_sprites, run.max_failures, self.summary, self.times, self.log)  # fmt: skip


def run_task(request: RunRequest, task: Task | None = None, duties: Duties = Duties(), log: Log | None = None,
             observer: Observer | None = None) -> Summary:  # fmt: skip
    """This process's part of a run: the whole table, one shard `task`, or its rank's share under a launcher.
    `observer`: told when the folder is held and when the work is planned."""
    started = time.perf_counter()
    config = request.config
    shard = (task.index, task.count) if task else None
    process = current_process(shard)
    log = log or Log(request.log_format or config.run.log_format)
    log.rank = process.rank
    table = read_table(config, request.input_path)  # a table that is refused loads no model
    storage = Storage(request.out)
    made = _first_missing(storage)
    storage.makedirs()
    # The signal handlers come with the folder: from the moment a run reports its start, any signal ends
    # it through its own reporting (exit 130), never by the default handlers' sudden death.
    with _held(storage, process, shard, duties, log, made) as stop:
        if observer:
            observer.started(process)
        config = _folder_sprites(config, storage)
        job = _plan(config, table, storage, process, log, request.verify)
        if observer:
            observer.planned(job.summary)
        fault_point("planned")
        with PartWriter(storage, part_stem(process.rank, process.world_size)) as part:
            if not _stopped(job, stop, "before anything was written"):
                _prepare_folder(job, table, part)
            if job.restyle and not job.summary.interrupted:
                _restyle(job, stop)
            if job.batches and not job.summary.interrupted:
                _render(job, part, stop, request.renderers)
        if duties.merge:
            _merge(job, table)
            fault_point("merged")
        job.summary.seconds = time.perf_counter() - started
        _write_statistics(job, table, request.input_path, part.stem)
    log.event("summary", **job.summary.counts(), out=str(storage))
    return job.summary


def read_table(config: Config, input_path: str | Path) -> Table:
    """The table, validated as the run's settings say (`--strict`: any invalid row refuses it all)."""
    run = config.run
    table = load_table(input_path, config.defaults, run.limit, config.templates, reserved=RESERVED_COLUMNS)
    if not config.run.safety_checker:
        table = table.without_safety_checker()
    if config.run.strict and table.invalid:
        raise TableError("\n".join(e for row in table.invalid for e in row.errors) + "\n--strict: nothing was run")
    return table


@contextmanager
def _held(storage: Storage, process: Process, shard, duties: Duties, log: Log, made: Path | None):
    """The folder's lock and the stop signals, when this process holds them; yields the stop event."""
    if not duties.hold_folder:
        yield threading.Event()
        return
    with lock_folder(storage, process, shard), _unmade_if_refused(storage, made), stop_on_signals(log) as stop:
        yield stop


def _first_missing(storage: Storage) -> Path | None:
    """The outermost folder of a local output path that does not exist yet (the run creates it)."""
    if not storage.is_local or storage.local().exists():
        return None
    folder = storage.local().absolute()
    while not folder.parent.exists():
        folder = folder.parent
    return folder


@contextmanager
def _unmade_if_refused(storage: Storage, made: Path | None):
    """The folders this run made are removed again when the model refuses the run (exit 4): they hold only
    the lock files then, removed while still held (so no other run can be using them)."""
    from ..model.sources import ModelLoadError

    try:
        yield
    except ModelLoadError:
        if made is not None:
            for lock in storage.local().glob(".lock*"):
                lock.unlink(missing_ok=True)
            folder = storage.local().absolute()
            with suppress(OSError):  # not empty: something else was written there, so it stays
                while folder.is_relative_to(made):
                    folder.rmdir()
                    folder = folder.parent
        raise


def _plan(config: Config, table: Table, storage: Storage, process: Process, log: Log, verify: bool) -> Job:
    """Batches on the whole table, then this process's share of those with rows not done."""
    from ..model.sources import resolve_sources
    from ..model.testing import ensure_tiny_model

    ensure_tiny_model(config.model)
    encoder, modes = _table_needs(table)  # the weights of every row's request, done or not
    checker = any(table.valid.params["enable_safety_checker"])
    sources = resolve_sources(config.model, safety_checker=checker, encoder=encoder, modes=modes)
    sources.raise_if_missing()
    _refuse_other_checkpoints(sources)
    loras = plan_lora_sets(config.model.loras, table.valid.loras)  # a run LoRA that cannot be used: exit 4
    identity = request_identity(config, sources)
    started, cpu = time.perf_counter(), time.process_time()
    batches = batch_positions(table.valid.signatures(), config.run.batch_size)
    files = InputFiles()
    if process.launched:  # the main process decides for all; the others take its answer
        pending = _pending(storage, table, identity, batches, config, verify, loras, files) if process.is_main else None
        pending = process.share_from_main(pending)
    else:  # alone, or a shard job that looks at its own slice only
        pending = _pending(storage, table, identity, [batches[i] for i in candidates(len(batches), process)],
                           config, verify, loras, files)  # fmt: skip
    work = pending.todo | pending.restyle if pending.restyle else pending.todo  # images to make or restyle
    mine = my_share(range(len(batches)), process, pending=lambda i: any(p in work for p in batches[i]))
    process.wait_for_peers()  # every process has read the folder before any writes to it
    summary = Summary(invalid=len(table.invalid), launched=process.launched,
                      skipped=pending.examined - len(pending.todo) if process.leads else 0)  # fmt: skip
    for row in table.invalid if process.is_main else ():
        log.event("invalid_row", row.error, id=row.key, row=row.number)
    log.event("plan", input=str(table.path), rows=table.total, invalid=len(table.invalid),
              to_do=len(pending.todo), batches=len(mine), world_size=process.world_size)  # fmt: skip
    keys = table.valid.keys
    rendered = [i for i in mine if any(p in pending.todo for p in batches[i])]  # the others: sprites only
    own = [_batch(i, tuple(table.valid.row(p) for p in batches[i]), loras.of(batches[i][0]), files) for i in rendered]
    todo = {keys[p] for i in mine for p in batches[i] if p in pending.todo}
    places = {keys[p]: url for p, url in pending.places.items()}
    job = Job(config, storage, process, log, own, todo, places, identity, sources, summary, loras=loras,
              restyle={keys[p] for i in mine for p in batches[i] if p in pending.restyle},
              old_sprites={keys[p]: entries for p, entries in pending.old_sprites.items()})  # fmt: skip
    job.times.spend("decide", time.perf_counter() - started)
    job.times.spend("decide_cpu", time.process_time() - cpu)
    return job


def _table_needs(table: Table) -> tuple[bool, tuple[str, ...]]:
    """Whether some row encodes an image, and the layer modes rows use (plain tables: nothing, no work)."""
    if not table.valid.inputs:
        return False, ()
    kinds = table.valid.kinds()
    return needs(table.valid.row(i) for i, kind in enumerate(kinds) if kind is not None)


def _batch(index: int, rows: tuple, loras, files: InputFiles) -> Batch:
    return Batch(index, rows, loras, files.of(rows))


@dataclass(frozen=True)
class Pending:
    todo: set[int]  # positions of the rows to generate
    places: dict[int, str]  # {position: recorded image url} of rows to redo that have one
    examined: int  # rows looked at
    restyle: set[int] = field(default_factory=set)  # positions of done rows whose sprites are outdated
    old_sprites: dict[int, list] = field(default_factory=dict)  # {position: recorded sprites} of rows to redo


def _refuse_other_checkpoints(sources) -> None:
    """A single-file base is judged from its header before any row (and before it is hashed): SD 1.x/2.x,
    SD 3, FLUX, a LoRA or a truncated download stops the run with what was found (exit 4)."""
    if Path(sources.base).is_file():
        from ..model.checkpoint import require_sdxl_checkpoint

        require_sdxl_checkpoint(sources.base, vae_override=sources.vae is not None)


def _pending(storage: Storage, table: Table, identity: Identity, batches: list[list[int]], config: Config,
             verify: bool, loras: RowLoraSets, files: InputFiles) -> Pending:  # fmt: skip
    positions = [p for batch in batches for p in batch]
    valid = table.valid
    keys = [valid.keys[p] for p in positions]
    columns = [[valid.params[c][p] for p in positions] for c in PARAM_COLUMNS]
    hashes = identity.request_hashes(columns, loras.hash_keys(positions), _usages(valid, positions, identity, files))
    sprites = config.sprites.active
    state = folder_state(storage, STATE_COLUMNS + ["sprites", "mode"] if sprites else STATE_COLUMNS)
    decision = decide(storage, keys, state, hashes, verify)
    redo = config.run.overwrite
    todo = {p for p, done in zip(positions, decision.done, strict=True) if redo or not done}
    places = {p: url for p, url in zip(positions, decision.urls, strict=True) if url and p in todo}
    if not sprites:
        return Pending(todo, places, len(positions))
    restyle, old = sprite_plan(storage, state, keys, [p in todo for p in positions], config.sprites)
    return Pending(todo, places, len(positions), {positions[i] for i in restyle},
                   {positions[i]: entries for i, entries in old.items()})  # fmt: skip


def _usages(valid, positions: list[int], identity: Identity, files: InputFiles) -> list[str] | None:
    """Each row's img2img / hires / layer-mode part of its request; None for a table without any (no work)."""
    if not valid.inputs:
        return None
    kinds = valid.kinds()
    usages = []
    for p in positions:
        row = valid.row(p) if kinds[p] is not None else None
        usages.append(identity.usage(row, files.of([row])) if row is not None else "")
    return usages


def _prepare_folder(job: Job, table: Table, part: PartWriter) -> None:
    storage = job.storage
    sweep_temporaries(storage)
    _log_dropped_atlases(job, drop_atlases(storage, job.old_sprites.values()))  # sprites that rows redone replace
    if job.batches or job.restyle:  # the old manifest would describe files this run replaces: rewritten at the end
        for name in (MANIFEST_JSONL, MANIFEST_PARQUET):
            storage.remove(name)
    if not job.process.is_main:
        return
    write_keys(storage, table.keys, table.passthrough)
    fault_point("keys_written")
    if table.invalid:
        state = folder_state(storage, ["id", "status", "error"])
        recorded = dict(zip(state.column("id").to_pylist(), state.column("error").to_pylist(), strict=True))
        for row in table.invalid:
            if recorded.get(row.key) != row.error:
                part.append(manifest_record(row, Invalid(row.errors)))


def _folder_sprites(config: Config, storage: Storage) -> Config:
    """Without sprite settings of its own, a run derives sprites as the folder's last run or `sprites DIR` did."""
    if config.sprites.active:
        return config
    from ..sprites.rederive import remembered_settings

    return replace(config, sprites=remembered_settings(storage))


def _restyle(job: Job, stop: threading.Event) -> None:
    """Sprites of done images derived again from their raw PNGs (the settings changed): no model is loaded."""
    from ..sprites.rederive import records_of, rederive

    started = time.perf_counter()
    records = records_of(job.storage, sorted(job.restyle))
    stem = part_stem(job.process.rank, job.process.world_size)
    done, dropped = rederive(job.storage, records, job.config.sprites, job.config.run.png_compress_level, stem, stop)
    _log_dropped_atlases(job, dropped)
    job.times.spend("sprites", time.perf_counter() - started)
    job.log.event("sprites_derived", images=done, seconds=round(time.perf_counter() - started, 2))
    if done < len(records):
        job.summary.interrupted = True
        job.log.event("interrupted", "stopped while deriving sprites; rerun to continue")


def _log_dropped_atlases(job: Job, labels: list[str]) -> None:
    if labels:
        shown = ", ".join(f"atlas/{label}" for label in labels)
        job.log.event("atlas_removed", f"{shown}: their sprites change; run `layerdiffuse atlas` again to pack them")


def _render(job: Job, part: PartWriter, stop: threading.Event, renderers: RendererFactory) -> None:
    if all(batch.loras.error for batch in job.batches):  # only rows whose own LoRAs cannot be used: no model
        with PostProcessor(job.post_context(), part) as post:
            for batch in job.batches:
                post.submit(batch, _todo(job, batch, [Failed(batch.loras.error)] * len(batch.rows)), 0.0)
        return
    if _stopped(job, stop, "before the model was loaded"):
        return
    renderer, provenance = _renderer(job, part, renderers)
    config, log = job.config, job.log
    png = PngSettings(model_label(config), SCHEDULERS[config.model.scheduler], config.run.png_compress_level,
                      a1111_model_fields(job.sources, model_label(config)))  # fmt: skip
    threads = writer_threads(config.run.writer_threads, renderer.device)
    with (
        log.progress(len(job.todo)) as advance,
        PostProcessor(job.post_context(), part, provenance, png, renderer.safety_checker, threads, advance) as post,
    ):
        for batch in job.batches:
            post.raise_error()  # e.g. too many failures: no more batches are generated
            if _stopped(job, stop, "after the last finished batch"):  # what was handed over is still written
                break
            started = time.perf_counter()
            outcomes = _todo(job, batch, renderer.render(batch))  # the safety check follows in post-processing
            seconds = time.perf_counter() - started
            job.times.spend("generate", seconds)
            fault_point("batch_generated")
            post.submit(batch, outcomes, round(seconds / len(batch.rows), 4))
            log.event("batch_done", batch=batch.index, rows=len(batch.rows), seconds=round(seconds, 3))


def _renderer(job: Job, part: PartWriter, renderers: RendererFactory) -> tuple[Renderer, Provenance]:
    """The renderer (with the safety checker when a row to do asks for it) and the provenance its records
    carry."""
    config, started = job.config, time.perf_counter()
    todo = [r for b in job.batches for r in b.rows if r.key in job.todo]
    needs_checker = any(r.enable_safety_checker for r in todo)
    encoder, modes = needs(todo)  # the encoder and layer models load only when rows to do need them
    setup = RenderSetup(config, job.sources, job.loras.run, job.process.local_rank, needs_checker, job.log,
                        encoder, modes)  # fmt: skip
    renderer = renderers(setup)  # the run's LoRAs must fit: exit 4 if not
    job.log.event("model_loaded", seconds=round(time.perf_counter() - started, 2), device=str(renderer.device))
    job.times.spend("load_model", time.perf_counter() - started)
    fault_point("model_loaded")
    env = environment(renderer.device, renderer.device_name, renderer.dtype, config, job.process.world_size)
    weights = {**renderer.weights, **weights_provenance(job.sources, config.model.base_config)}
    provenance = Provenance(weights, env, job.process.rank)
    part.set_context(provenance.model, provenance.environment, provenance.rank)
    return renderer, provenance


def _stopped(job: Job, stop: threading.Event, when: str) -> bool:
    """Whether a signal asked the run to stop; the first time, the run is marked interrupted (exit 130)."""
    if stop.is_set() and not job.summary.interrupted:
        job.summary.interrupted = True
        job.log.event("interrupted", f"stopped {when}; rerun to continue")
    return job.summary.interrupted


def _todo(job: Job, batch: Batch, outcomes: list[Outcome]) -> list[Outcome]:
    """Rows done by an earlier run are `Skipped` (they were only batch-mates)."""
    return [o if row.key in job.todo else Skipped() for row, o in zip(batch.rows, outcomes, strict=True)]


def _merge(job: Job, table: Table) -> None:
    """The process that sees every row finished writes the merged manifest."""
    if job.summary.interrupted:
        return
    merged = merge(job.storage, table.keys, table.passthrough)
    if merged is not None:
        job.summary.manifest_written = True
        job.summary.unfinished_in_manifest = merged.unfinished


def _write_statistics(job: Job, table: Table, input_path: Path, stem: str) -> None:
    """Per process `stats/<part>.json` (as img2dataset writes per shard); the main process also `run.json`."""
    s = job.summary
    stats = {"rank": job.process.rank, "world_size": job.process.world_size, "rows": table.total, "done": s.ok,
             "failed": s.failed, "flagged": s.flagged, "skipped": s.skipped, "invalid": s.invalid,
             "interrupted": s.interrupted, "images_per_second": round(s.images_per_second, 4),
             "seconds": {"total": round(s.seconds, 3), **{k: round(v, 3) for k, v in job.times.seconds.items()}},
             }  # fmt: skip
    job.storage.write(stats_file(stem), (json.dumps(stats, indent=1) + "\n").encode())
    if job.process.is_main:
        info = {"input": shown_input(input_path), "total_rows": table.total, "finished_at": utc_now(),
                "config": as_dict(job.config), "stats": stats}  # fmt: skip
        write_run_info(job.storage, info)


def shown_input(location) -> str:
    """The table's absolute path, or its URL without credentials."""
    text = str(location)
    return display(text) if "://" in text else str(Path(text).resolve())
