"""Counts of done / failed / invalid / pending rows in an output folder, from its files alone."""

from __future__ import annotations

import pyarrow.compute as pc

from ..common.storage import Storage
from ..folder.manifest import STATE_COLUMNS, folder_state, read_keys
from ..folder.repair import repair_manifests
from ..folder.schema import Status
from ..plan.pending import decide


def folder_status(storage: Storage, verify: bool = False) -> dict[str, int]:
    """No image is opened unless `verify`, which re-hashes every image and counts changed ones as damaged.
    Damaged manifests are merged again (derived files: a status must not say done over a broken manifest)."""
    repair_manifests(storage)
    keys, _ = read_keys(storage)
    state = folder_state(storage, STATE_COLUMNS)
    decision = decide(storage, keys.to_pylist(), state, verify=verify)
    statuses = state.column("status").take(pc.index_in(keys, state.column("id"))).to_pylist()
    counts = {"total": len(keys), "done": sum(decision.done), "failed": 0, "invalid": 0, "pending": 0}
    for done, status in zip(decision.done, statuses, strict=True):
        if not done:
            counts[status if status in (Status.FAILED.value, Status.INVALID.value) else "pending"] += 1
    if verify:
        counts["damaged"] = len(decision.damaged)
    return counts
