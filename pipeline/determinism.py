"""Everything that decides what a row's image is, in one place: seeds and batch composition.

Batches are formed from the whole valid table, before any sharding or resume filtering, so a row is
always denoised with the same batch-mates whatever the process count or what was already done.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .records import Batch, Row

SEED_BITS = 53  # stays exact in JSON readers that use doubles


def derive_seed(base_seed: int, key: str) -> int:
    """Seed of a row without one: the first 53 bits of sha256("<base seed>:<row key>")."""
    digest = hashlib.sha256(f"{base_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def batch_positions(signatures: Sequence[tuple], batch_size: int) -> list[list[int]]:
    """Group row positions by batch signature (in order of first appearance), then cut into batch_size chunks."""
    groups: dict[tuple, list[int]] = {}
    for position, signature in enumerate(signatures):
        groups.setdefault(signature, []).append(position)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def plan_batches(rows: Sequence[Row], batch_size: int) -> list[Batch]:
    """The same rule on `Row` objects."""
    positions = batch_positions([row.batch_signature for row in rows], batch_size)
    return [Batch(index, tuple(rows[p] for p in group)) for index, group in enumerate(positions)]
