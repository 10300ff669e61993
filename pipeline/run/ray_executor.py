"""`--executor ray`: the table's shards as tasks on a Ray cluster; this process is the driver.

The driver reads the table (a refused table starts nothing), holds the output folder, hands `Task(i, N)` to
the workers (run/ray_tasks.py: each behaves as `--shard i/N` would), keeps the run's one log and progress bar,
and merges once at the end. Ray retries a task whose worker or node died (`max_retries`); the retry resumes
its shard from the part logs, which hold a record only once its image is in place, so nothing is written
twice. Outputs do not depend on N or on where a shard ran: batches and seeds are the whole table's.

Two ways to keep the model loaded: a pool of actors, one per slot (the default), or plain tasks, whose
worker processes Ray reuses (tests/bench/RESULTS.md, "Ray executor", compares them).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

from ..common.logs import Log, utc_now
from ..common.storage import Storage
from ..folder.lock import lock_folder
from ..folder.manifest import merge, write_run_info
from ..input.config import RunConfig, as_dict
from ..input.table import Table
from ..plan.sharding import Process
from .loop import RunRequest, Task, TooManyFailures, read_table, shown_input
from .ray_tasks import ShardResult, ShardRunner, run_shard
from .signals import stop_on_signals
from .summary import Observer, Summary

INSTALL = "pip install 'layerdiffuse-batch[ray]'"
TASKS_PER_WORKER = 4  # shards per slot: a slow worker or a lost node holds up a quarter of its share, not all
MAX_RETRIES = 3  # tries after a task's worker or node dies
QUIET = {"plan", "summary", "batch_done", "model_loaded"}  # a worker's events that `task_done` sums up
POLL_SECONDS = 0.2  # how often the driver looks at the stop signal while it waits for results


class ClusterError(ValueError):
    """The run cannot go to the cluster (Ray missing, a folder the nodes cannot share): exit 2."""


def require_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--executor ray needs Ray, an optional extra: {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class RaySettings:
    address: str | None = None  # None: $RAY_ADDRESS, else a cluster of this machine started for the run
    tasks: int | None = None  # None: TASKS_PER_WORKER per slot
    gpus_per_task: float | None = None  # None: 1 on a cluster with GPUs, else 0
    actors: bool = True  # a pool of actors; False: plain tasks
    max_retries: int = MAX_RETRIES

    @classmethod
    def of(cls, run: RunConfig) -> RaySettings:
        return cls(run.ray_address, run.tasks, run.gpus_per_task)


@dataclass(frozen=True)
class Placement:
    """How a run is laid on the cluster."""

    tasks: int
    workers: int  # shards that run at once (the actors of the pool)
    gpus: float  # per task
    nodes: int

    @classmethod
    def decide(cls, settings: RaySettings, resources: dict, nodes: int, rows: int) -> Placement:
        gpus = settings.gpus_per_task
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        slots = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1))
        if slots < 1:
            raise ClusterError(f"the Ray cluster has {resources.get('GPU', 0):g} GPUs: none can take a task of "
                               f"--gpus-per-task {gpus:g}")  # fmt: skip
        tasks = settings.tasks or max(1, min(TASKS_PER_WORKER * slots, rows))
        return cls(tasks, min(slots, tasks), gpus, nodes)


def refuse_unshared(location, storage: Storage, nodes: int) -> None:
    """A plain local path means this machine's disk: other nodes would write into folders of their own."""
    if storage.is_local and nodes > 1 and not str(location).startswith("file://"):
        shared = f"file://{storage.local().absolute()}"
        raise ClusterError(f"--out {location} is a local path, and the Ray cluster has {nodes} nodes: every node "
                           "must write into the same folder. Use an object store URL (s3://bucket/run), or a "
                           f"shared filesystem mounted at the same path on every node written as {shared}")  # fmt: skip


@dataclass(frozen=True)
class RayExecutor:
    settings: RaySettings = RaySettings()

    def run(self, request: RunRequest, log: Log | None = None, observer: Observer | None = None) -> Summary:
        ray = require_ray()
        log = log or Log(request.log_format or request.config.run.log_format)
        table = read_table(request.config, request.input_path)  # a refused table starts no cluster
        storage = Storage(request.out)
        with _connected(ray, self.settings.address):
            nodes = sum(1 for node in ray.nodes() if node["Alive"])
            refuse_unshared(request.out, storage, nodes)
            placement = Placement.decide(self.settings, ray.cluster_resources(), nodes, len(table.valid))
            storage.makedirs()
            with lock_folder(storage, Process()), stop_on_signals(log) as stop:
                drive = _Drive(ray, request, table, storage, log, stop)
                return drive.run(self.settings, placement, observer)


@contextmanager
def _connected(ray, address: str | None):
    """The cluster at `address` (else $RAY_ADDRESS, else a new one on this machine: never one that happens to
    run here already); one this process is already connected to (a program that called `ray.init`) is used as
    it is, and left connected."""
    if ray.is_initialized():
        yield
        return
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


class _Drive:
    """One run's driver: hands out the shards, sums their results, merges at the end."""

    def __init__(self, ray, request: RunRequest, table: Table, storage: Storage, log: Log, stop):
        self.ray, self.request, self.table, self.storage, self.log, self.stop = ray, request, table, storage, log, stop
        self.summary = Summary(invalid=len(table.invalid))
        self.run_id = uuid.uuid4().hex

    def run(self, settings: RaySettings, placement: Placement, observer: Observer | None) -> Summary:
        started = time.perf_counter()
        if observer:
            observer.started(Process())
            observer.planned(self.summary)
        self.log.event("ray_plan", tasks=placement.tasks, workers=placement.workers, gpus_per_task=placement.gpus,
                       nodes=placement.nodes, pool="actors" if settings.actors else "tasks")  # fmt: skip
        workers = (_Actors if settings.actors else _Tasks)(self.ray, settings, placement)
        try:
            with self.log.progress(len(self.table.valid)) as advance:
                self._collect(workers, placement.tasks, advance)
        finally:
            workers.close()
        if not self.summary.interrupted:
            self._merge()
        self.summary.seconds = time.perf_counter() - started
        self._write_run_info(placement)
        self.log.event("summary", **self.summary.counts(), out=str(self.storage))
        return self.summary

    def _collect(self, workers, count: int, advance) -> None:
        waiting, running = deque(Task(i, count) for i in range(count)), {}
        while waiting or running:
            while waiting and workers.free():
                task = waiting.popleft()
                running[workers.submit(self.request, task, self.run_id)] = task
            if self.stop.is_set():
                self._stopped(workers, running)
                return
            ready, _ = self.ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                task = running.pop(ref)
                try:
                    result = self.ray.get(ref)
                except self.ray.exceptions.RayError as exc:
                    workers.release(ref, lost=not isinstance(exc, self.ray.exceptions.RayTaskError))
                    self._failed(exc, task, workers, running)
                    continue
                workers.release(ref)
                self._finished(result, advance)

    def _finished(self, result: ShardResult, advance) -> None:
        s, mine = self.summary, result.summary
        for name in ("ok", "flagged", "failed", "skipped"):
            setattr(s, name, getattr(s, name) + getattr(mine, name))
        shown = f"{result.task.index}/{result.task.count}"
        for line in result.events:
            record = json.loads(line)
            if record["event"] not in QUIET:
                fields = {k: v for k, v in record.items() if k not in ("ts", "event", "rank", "message")}
                self.log.event(record["event"], record.get("message", ""), task=shown, **fields)
        self.log.event("task_done", task=shown, host=result.host, pid=result.pid, **mine.counts())
        advance(mine.ok + mine.failed + mine.skipped)
        limit = self.request.config.run.max_failures
        if limit is not None and s.failed > limit:
            raise TooManyFailures(f"{s.failed} rows failed (--max-failures {limit}); the log names them")

    def _failed(self, exc: BaseException, task: Task, workers, running: dict) -> None:
        """A shard's own error (bad weights, too many failures) ends the run; a shard whose worker died more
        often than Ray retries it is left to a rerun while the other shards finish."""
        if isinstance(exc, self.ray.exceptions.RayTaskError):
            workers.cancel(running)
            cause = getattr(exc, "cause", None)
            raise cause if isinstance(cause, Exception) else exc
        self.summary.interrupted = True
        message = f"{type(exc).__name__}: its worker died {workers.retries + 1} times; rerun to continue"
        self.log.event("task_lost", message, task=f"{task.index}/{task.count}")

    def _stopped(self, workers, running: dict) -> None:
        """A signal: the shards under way end where they are (their finished images are recorded)."""
        workers.cancel(running)
        self.summary.interrupted = True
        self.log.event("interrupted", "stopped the shards under way; rerun to continue")

    def _merge(self) -> None:
        merged = merge(self.storage, self.table.keys, self.table.passthrough)
        if merged is not None:
            self.summary.manifest_written = True
            self.summary.unfinished_in_manifest = merged.unfinished

    def _write_run_info(self, placement: Placement) -> None:
        """run.json: the whole run's counts (each shard's own are in stats/)."""
        s = self.summary
        stats = {"executor": "ray", "tasks": placement.tasks, "workers": placement.workers, "nodes": placement.nodes,
                 "rows": self.table.total, **{k: v for k, v in s.counts().items() if k != "manifest"}}  # fmt: skip
        write_run_info(self.storage, {"input": shown_input(self.request.input_path), "total_rows": self.table.total,
                                      "finished_at": utc_now(), "config": as_dict(self.request.config),
                                      "stats": stats})  # fmt: skip


class _Tasks:
    """Plain tasks: Ray queues them all; a worker process that ran one keeps its model for the next."""

    def __init__(self, ray, settings: RaySettings, placement: Placement):
        self.ray, self.retries = ray, settings.max_retries
        self.remote = ray.remote(run_shard).options(num_cpus=1, num_gpus=placement.gpus,
                                                    max_retries=settings.max_retries)  # fmt: skip

    def free(self) -> bool:
        return True

    def submit(self, request: RunRequest, task: Task, run_id: str):
        return self.remote.remote(request, task, run_id)

    def release(self, ref, lost: bool = False) -> None:
        pass

    def cancel(self, refs) -> None:
        for ref in refs:
            self.ray.cancel(ref, force=True)  # the worker process ends: its shard's records so far stand

    def close(self) -> None:
        pass


class _Actors:
    """A pool of actors, one per slot, each given its next shard as it finishes one; an actor whose process
    dies is restarted by Ray and its shard retried there."""

    def __init__(self, ray, settings: RaySettings, placement: Placement):
        self.ray, self.retries = ray, settings.max_retries
        self.kind = ray.remote(ShardRunner).options(num_cpus=1, num_gpus=placement.gpus,
                                                    max_restarts=settings.max_retries,
                                                    max_task_retries=settings.max_retries)  # fmt: skip
        self.actors = [self.kind.remote() for _ in range(placement.workers)]
        self.idle = deque(self.actors)
        self.busy: dict = {}

    def free(self) -> bool:
        return bool(self.idle)

    def submit(self, request: RunRequest, task: Task, run_id: str):
        actor = self.idle.popleft()
        ref = actor.run.remote(request, task, run_id)
        self.busy[ref] = actor
        return ref

    def release(self, ref, lost: bool = False) -> None:
        actor = self.busy.pop(ref)
        if lost:  # restarted more often than allowed: a fresh actor takes its place for the other shards
            self.ray.kill(actor)
            self.actors.remove(actor)
            actor = self.kind.remote()
            self.actors.append(actor)
        self.idle.append(actor)

    def cancel(self, refs) -> None:
        self.close()  # Ray cannot force-cancel an actor's task: the actor goes, as a cancelled task's worker does

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
