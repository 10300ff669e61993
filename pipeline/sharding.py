"""The only module that knows about the distributed runtime: which batches belong to this process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_process(shard: tuple[int, int] | None = None) -> Process:
    """Rank and world size from `--shard I/N`, else from the launcher (accelerate, torchrun, Slurm)."""
    if shard is not None:
        return Process(rank=shard[0], world_size=shard[1])
    if not _launched():
        return Process()
    import torch
    from accelerate import PartialState

    # Without CUDA, accelerate needs cpu=True to pick the gloo backend (else it sees a single process).
    state = PartialState(cpu=not torch.cuda.is_available())
    return Process(rank=state.process_index, world_size=state.num_processes, local_rank=state.local_process_index)


def _launched() -> bool:
    # accelerate launch and torchrun set WORLD_SIZE; a plain run stays free of the distributed runtime.
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def my_share(work: list[T], process: Process) -> list[T]:
    """Round-robin over the remaining work: shares differ by at most one item, none is given twice."""
    return work[process.rank :: process.world_size]


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return index, count
