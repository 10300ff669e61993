"""Where a run's tasks run. A run is a list of tasks, each a shard of the table (`Task(I, N)`: batches I, I + N,
... of the whole table); an executor decides where each task runs, and its last step merges the manifest.

- `InProcess`: this process runs one task: the whole table, one `--shard I/N` job (an independent job:
  Slurm arrays, cron hosts), or its rank's share of an accelerate/torchrun launch (its peers run theirs). It
  holds the folder for its task; the process that sees every row finished merges.
- A cluster executor (run/ray_executor.py) holds the folder itself, runs `run_task` with
  `Duties(hold_folder=False, merge=False)` on its workers, and merges once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..common.logs import Log
from ..input.config import Config
from .loop import Duties, RunRequest, Task, run_task
from .renderer import ModelRenderer, RendererFactory
from .summary import Observer, Summary


class Executor(Protocol):
    def run(self, request: RunRequest, log: Log | None = None, observer: Observer | None = None) -> Summary:
        """Every task of the run, then the merge; the run's summary."""


@dataclass(frozen=True)
class InProcess:
    """This process runs its task; `task`: a `--shard I/N` job's (None: the whole table, or this process's
    rank under a launcher)."""

    task: Task | None = None

    def run(self, request: RunRequest, log: Log | None = None, observer: Observer | None = None) -> Summary:
        return run_task(request, self.task, Duties(), log, observer)


def generate(config: Config, input_path: str | Path, out: str | Path, shard: tuple[int, int] | None = None,
             log: Log | None = None, verify: bool = False, observer: Observer | None = None,
             renderers: RendererFactory = ModelRenderer) -> Summary:  # fmt: skip
    """A run in this process; `shard`: (I, N) of a `--shard I/N` job."""
    request = RunRequest(config, input_path, out, verify, renderers=renderers)
    return InProcess(Task(*shard) if shard else None).run(request, log, observer)
