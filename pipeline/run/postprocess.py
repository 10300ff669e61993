"""What follows generation, beside it: the safety check, PNG encoding, writing and hashing, sprites, records.

The model's thread hands each generated batch over (`PostProcessor.submit`) and goes on with the next. A few
threads do the host work (most of it runs in C with the GIL released: zlib, sha256, numpy, file writes), and
one committer appends the records strictly in batch and row order, each only after its image and sprites are
in place, exactly as a run without threads does. At most IN_FLIGHT batches wait or work at once, so memory
stays flat; the first error (a full disk, too many failures, a bug) stops the records and is raised on the
model's thread at its next call. Without threads everything runs in turn on the calling thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from ..common.faults import fault_point
from ..common.logs import Log
from ..common.storage import Storage
from ..folder.layout import image_url
from ..folder.parts import PartWriter
from ..input.rows import Row
from ..input.sprite_settings import SpriteSettings
from ..plan.batches import Batch
from ..plan.identity import Identity
from ..sprites.files import remove_replaced, write_sprites
from .outcome import HAS_IMAGE, Failed, Flagged, Outcome, Provenance, Rendered, Skipped, Written, manifest_record
from .png import PngSettings, write_image
from .summary import StageTimes, Summary

IN_FLIGHT = 2  # batches handed over and not yet recorded: memory stays at about (IN_FLIGHT + 1) batches
ACCELERATOR_THREADS = 2  # two encoders keep up with 0.3 s/image at batch 4 on shared cores (tests/bench)


class TooManyFailures(RuntimeError):
    """More rows failed than --max-failures allows: the run stops instead of failing everywhere."""


def writer_threads(setting: int | None, device) -> int:
    """`run.writer_threads`, or by device: threads beside an accelerator; none on a CPU, where torch already
    keeps every core busy and writing in turn measured faster (tests/bench/RESULTS.md, section 1)."""
    if setting is not None:
        return setting
    return 0 if device.type == "cpu" else ACCELERATOR_THREADS


@dataclass(frozen=True)
class PostContext:
    """What post-processing needs of a run: where images go, how records are made, what it counts."""

    storage: Storage
    identity: Identity  # request hashes for the records
    places: Mapping[str, str]  # where a redone row's image already is (its recorded url)
    images_per_folder: int
    sprites: SpriteSettings
    old_sprites: Mapping[str, list]  # recorded sprites of rows redone: removed once their new records are in
    max_failures: int | None
    summary: Summary  # counts grow as rows are recorded
    times: StageTimes
    log: Log


@dataclass(frozen=True)
class _Handed:
    """A generated batch on its way to its records."""

    batch: Batch
    share: float  # generation seconds per row
    prepared: Future  # -> [(outcome after the safety check, Future of its Written or None)] per row


class PostProcessor:
    """`with PostProcessor(...) as post: post.submit(batch, outcomes, share)` per generated batch; leaving the
    block normally finishes every batch handed over (as a signal stop wants), leaving on an error abandons
    those not yet recorded (their rows are redone by the next run)."""

    def __init__(self, context: PostContext, part: PartWriter, provenance: Provenance | None = None,
                 png: PngSettings | None = None, checker=None, threads: int = 0,
                 advance: Callable[[], object] = lambda: None):  # fmt: skip
        self._context, self._part, self._provenance, self._png = context, part, provenance, png
        self._checker, self._advance = checker, advance
        self._checking = threading.Lock()  # one checker call at a time: its device memory stays that of one batch
        self._pool: Executor = ThreadPoolExecutor(threads, thread_name_prefix="post") if threads else _InTurn()
        self._error: BaseException | None = None
        self._abandoned = threading.Event()
        self._room = threading.Condition()
        self._in_flight = 0
        self._queue: queue.SimpleQueue[_Handed | None] = queue.SimpleQueue()
        self._committer = threading.Thread(target=self._commit_in_order, name="post-commit") if threads else None
        if self._committer:
            self._committer.start()

    def submit(self, batch: Batch, outcomes: list[Outcome], share: float) -> None:
        """Hand a generated batch over (one outcome per row); waits while IN_FLIGHT batches are unfinished.
        Raises the first error met so far."""
        self.raise_error()
        if self._committer is None:
            return self._commit(_Handed(batch, share, self._pool.submit(self._prepare, batch, outcomes)))
        with self._room:
            while self._in_flight >= IN_FLIGHT and self._error is None:
                self._room.wait()
            self.raise_error()
            self._in_flight += 1
        self._queue.put(_Handed(batch, share, self._pool.submit(self._prepare, batch, outcomes)))

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> PostProcessor:
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        if kind is not None:
            return self._abandon()
        try:
            self._finish()
        except BaseException:
            self._abandon()
            raise

    def _finish(self) -> None:
        """Every batch handed over is recorded (or the first error raised)."""
        if self._committer:
            self._queue.put(None)
            self._committer.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.raise_error()

    def _abandon(self) -> None:
        """Stop at the next record: work not yet started is dropped, writes under way end (before the folder's
        lock is let go); files without records are redone later."""
        self._abandoned.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._committer and self._committer.is_alive():
            self._queue.put(None)
            self._committer.join()

    # --- on the pool: the safety check, then one write per image ---

    def _prepare(self, batch: Batch, outcomes: list[Outcome]) -> list[tuple[Outcome, Future | None]]:
        checked = self._screened(batch.rows, outcomes)
        return [(o, self._pool.submit(self._write, row, batch, o) if isinstance(o, HAS_IMAGE) else None)
                for row, o in zip(batch.rows, checked, strict=True)]  # fmt: skip

    def _screened(self, rows: tuple[Row, ...], outcomes: list[Outcome]) -> list[Outcome]:
        """Rendered images of rows that ask for it go through the safety checker (batched); a failure there
        fails only the rows whose image cannot be checked on its own."""
        wanted = [i for i, o in enumerate(outcomes) if isinstance(o, Rendered) and rows[i].enable_safety_checker]
        if not wanted:
            return outcomes
        started, checked = time.perf_counter(), list(outcomes)
        try:
            results = self._check([rows[i] for i in wanted], [outcomes[i] for i in wanted])
        except Exception:  # e.g. out of memory: each image on its own
            results = [self._check_alone(rows[i], outcomes[i]) for i in wanted]
        for i, result in zip(wanted, results, strict=True):
            checked[i] = result
        self._context.times.spend("screen", time.perf_counter() - started)
        return checked

    def _check(self, rows: list[Row], rendered: list[Rendered]) -> list[Outcome]:
        import numpy as np

        from ..model import screen

        with self._checking:
            images, flags = screen(self._checker, rows, np.stack([r.rgba for r in rendered]))
        pairs = zip(images, flags, strict=True)
        return [Flagged(rgba) if flag else Rendered(rgba, checked=True) for rgba, flag in pairs]

    def _check_alone(self, row: Row, rendered: Rendered) -> Outcome:
        try:
            return self._check([row], [rendered])[0]
        except Exception as exc:
            return Failed(f"{type(exc).__name__}: {exc}")

    def _write(self, row: Row, batch: Batch, outcome: Rendered | Flagged) -> Written:
        context = self._context
        url = context.places.get(row.key) or image_url(row.place, row.key, context.images_per_folder)
        written = write_image(context.storage, url, row, outcome.rgba, self._png, batch.loras.loras)
        context.times.spend("encode", written.encode_seconds)
        context.times.spend("write", written.write_seconds - written.encode_seconds)
        fault_point("png_in_place")
        if context.sprites.active and has_sprites(row, outcome.rgba):  # derived before its record says it is done
            started = time.perf_counter()
            sprites = write_sprites(context.storage, url, outcome.rgba, context.sprites, self._png.compress_level)
            written = replace(written, sprites=sprites)
            context.times.spend("sprites", time.perf_counter() - started)
        return written

    # --- the committer: records in batch and row order ---

    def _commit_in_order(self) -> None:
        while (handed := self._queue.get()) is not None:
            try:
                if self._error is None and not self._abandoned.is_set():
                    self._commit(handed)
            except BaseException as exc:  # raised on the model's thread
                self._error = exc
            finally:
                with self._room:
                    self._in_flight -= 1
                    self._room.notify()

    def _commit(self, handed: _Handed) -> None:
        """The batch's records in row order, each once its files are in place; then its log goes up (object
        stores), the batch counts as recorded, and only then go the sprite files its new records replace."""
        replaced = []
        for row, (outcome, writing) in zip(handed.batch.rows, handed.prepared.result(), strict=True):
            if self._abandoned.is_set():
                return
            if isinstance(outcome, Failed):
                self._record_failure(row, handed.batch, outcome)
            elif not isinstance(outcome, Skipped):
                written = writing.result()
                self._record_image(row, handed.batch, outcome, written, handed.share)
                replaced.append((self._context.old_sprites.get(row.key), written.sprites))
        self._part.flush()
        if replaced:
            fault_point("batch_recorded")
        for old, new in replaced:
            remove_replaced(self._context.storage, old, new)

    def _record_image(self, row: Row, batch: Batch, outcome, written: Written, share: float) -> None:
        context = self._context
        request = context.identity.request_hash(row, batch.loras.key, batch.inputs)
        self._part.append(manifest_record(row, outcome, request_hash=request, batch=batch, written=written,
                                          provenance=self._provenance, generation_seconds=share))  # fmt: skip
        context.summary.ok += 1
        context.summary.flagged += isinstance(outcome, Flagged)
        self._advance()

    def _record_failure(self, row: Row, batch: Batch, outcome: Failed) -> None:
        context = self._context
        request = context.identity.request_hash(row, batch.loras.key, batch.inputs)
        self._part.append(manifest_record(row, outcome, request_hash=request, batch=batch,
                                          provenance=self._provenance))  # fmt: skip
        context.summary.failed += 1
        context.log.event("row_failed", outcome.error, id=row.key, row=row.number)
        self._advance()
        limit = context.max_failures
        if limit is not None and context.summary.failed > limit:
            failed = context.summary.failed
            raise TooManyFailures(f"{failed} rows failed (--max-failures {limit}); last error: {outcome.error}")


def has_sprites(row: Row, image) -> bool:
    """Sprites come from foregrounds only: RGBA images, not the RGB layers nor a `layers` triplet."""
    return image.shape[-1] == 4 and row.mode != "layers"


class _InTurn(Executor):
    """Runs each task at once on the calling thread (no threads: a CPU run)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # raised where the result is asked for (Ctrl-C at once)
            future.set_exception(exc)
        return future
