"""Which rows are denoised together (a row's seed is the table's: pipeline/input/seeds.py).

Batches are formed from the whole valid table, before any sharding or resume filtering, so a row is
always denoised with the same batch-mates whatever the process count or what was already done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..input.rows import Row
from .inputs import InputFile
from .lora_sets import NO_LORAS, LoraSet


def batch_positions(signatures: Sequence[tuple], batch_size: int) -> list[list[int]]:
    """Group row positions by batch signature (in order of first appearance), then cut into batch_size chunks."""
    groups: dict[tuple, list[int]] = {}
    for position, signature in enumerate(signatures):
        groups.setdefault(signature, []).append(position)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


@dataclass(frozen=True)
class Batch:
    """Rows denoised together; `index` orders batches the same way in every run of a table."""

    index: int
    rows: tuple[Row, ...]
    loras: LoraSet = NO_LORAS  # every row of a batch has the same set
    inputs: Mapping[str, InputFile] = field(default_factory=dict)  # the rows' input images, as planning found them
