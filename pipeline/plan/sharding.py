"""The only module that knows about the distributed runtime: which batches belong to this process.

Two ways to split a table:
- a launch (accelerate launch, torchrun): all processes start together, agree on what is left once at
  start-up (one barrier, before anything is written) and share the remaining batches evenly;
- `--shard I/N`: independent jobs that may run at different times; each owns a fixed slice of all
  batches and skips what is done, so no coordination is needed at all.
No collective communication happens while generating: a crashed process cannot hang the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by a launcher, with peers running now

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def leads(self) -> bool:
        """Speaks for its run: alone, a shard job, or the main process of a launch (which locks the folder and
        decides what is left for all of its processes)."""
        return self.is_main or not self.launched

    def share_from_main(self, value):
        """The main process's `value`, on every process of a launch (a start-up broadcast)."""
        if not self.launched:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def wait_for_peers(self) -> None:
        if self.launched:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def current_process(shard: tuple[int, int] | None = None) -> Process:
    """Rank and world size from `--shard I/N`, else from the launcher (accelerate, torchrun)."""
    if shard is not None:
        return Process(rank=shard[0], world_size=shard[1])
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Process()  # a plain run stays free of the distributed runtime
    import torch
    from accelerate import PartialState

    # Without CUDA, accelerate needs cpu=True to pick the gloo backend (else it sees a single process).
    state = PartialState(cpu=not torch.cuda.is_available())
    return Process(state.process_index, state.num_processes, state.local_process_index, launched=True)


def candidates(count: int, process: Process) -> range:
    """The batches a process looks at before deciding: a shard job its own slice, everyone else all."""
    return range(count) if process.launched else range(process.rank, count, process.world_size)


def my_share(batches: list[T], process: Process, pending: Callable[[T], bool]) -> list[T]:
    """This process's batches that still need work; no batch is given to two processes.

    Launched processes split the pending batches round-robin (shares differ by at most one batch);
    shards split all batches, so a shard's slice does not depend on what other shards finished.
    """
    if process.launched:
        return [b for b in batches if pending(b)][process.rank :: process.world_size]
    return [b for b in batches[process.rank :: process.world_size] if pending(b)]


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return index, count
