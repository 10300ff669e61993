"""Manifests that are damaged, found cheaply and merged again.

Only the images and the part logs are original; the keys file, the checkpoint and the two manifests are derived
from the table and the logs. A damaged one is never trusted: the keys are rebuilt from manifest.parquet or
from records of every row, and the checkpoint seeded from manifest.parquet when lost with every log
(manifest.py, where they are read); the manifests are merged again here. Damage is judged by the files' ends
alone (the Parquet footer, the last line of manifest.jsonl), so a start still reads no record to know.
"""

from __future__ import annotations

from ..common.storage import Storage
from .layout import MANIFEST_JSONL, MANIFEST_PARQUET
from .manifest import manifests_intact, merge, read_keys


def repair_manifests(storage: Storage) -> bool:
    """Merge again where a manifest is there but damaged; True when they were rewritten."""
    if not (storage.exists(MANIFEST_PARQUET) or storage.exists(MANIFEST_JSONL)):
        return False  # a run under way, or one that has not merged: nothing to repair
    keys, passthrough = read_keys(storage)
    if manifests_intact(storage, keys):
        return False
    merged = merge(storage, keys, passthrough)
    return merged is not None and merged.rewritten
