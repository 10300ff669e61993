"""What runs on a Ray worker: one shard of a run at a time, through the same `run_task` as a `--shard I/N` job.

The driver (run/ray_executor.py) holds the folder and merges; a worker only renders its shard
(`Duties(hold_folder=False, merge=False)`). A worker process keeps its renderer between the shards of one run
(`KeptRenderer`), whether it is an actor of the pool or a plain task's process (Ray reuses those). Its log
lines are kept and sent back with the result: the driver's log is the run's one log.
"""

from __future__ import annotations

import io
import os
import socket
from dataclasses import dataclass, replace

from ..common.logs import Log
from .loop import Duties, RunRequest, Task, run_task
from .renderer import KeptRenderer
from .summary import Summary

WORKER_DUTIES = Duties(hold_folder=False, merge=False)


@dataclass(frozen=True)
class ShardResult:
    """A finished shard, as the driver gets it."""

    task: Task
    summary: Summary
    events: list[str]  # the shard's log, one JSON object per line
    host: str
    pid: int


class ShardRunner:
    """Runs the shards it is given, one after another, keeping the renderer of the run they belong to."""

    def __init__(self):
        self._run_id: str | None = None
        self._kept: KeptRenderer | None = None
        self._lines = io.StringIO()

    def run(self, request: RunRequest, task: Task, run_id: str) -> ShardResult:
        if run_id != self._run_id:  # another run's shard (a driver that runs twice): its own model
            self._run_id, self._kept = run_id, KeptRenderer(request.renderers)
        self._lines.seek(0)
        self._lines.truncate()
        log = Log("json", rank=task.index, stream=self._lines)
        summary = run_task(replace(request, renderers=self._kept), task, WORKER_DUTIES, log)
        return ShardResult(task, summary, self._lines.getvalue().splitlines(), socket.gethostname(), os.getpid())

    def pid(self) -> int:
        return os.getpid()


_RUNNER = ShardRunner()  # a plain task's process: kept between the tasks Ray gives it


def run_shard(request: RunRequest, task: Task, run_id: str) -> ShardResult:
    """A shard as a plain Ray task."""
    return _RUNNER.run(request, task, run_id)
