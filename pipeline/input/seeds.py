"""A row's seed when the table gives none: derived from the run's base seed and the row's key, so it does not
depend on the row's position, the process count or what was done before."""

from __future__ import annotations

import hashlib

SEED_BITS = 53  # stays exact in JSON readers that use doubles


def derive_seed(base_seed: int, key: str) -> int:
    """Seed of a row without one: the first 53 bits of sha256("<base seed>:<row key>")."""
    digest = hashlib.sha256(f"{base_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)
