"""Temporary files that killed writers left in an output folder, swept from every tree a command writes.

Files appear whole through a temporary file named after its writer's host and pid (storage.write_atomic); a
writer killed before its rename leaves that file behind. Every command that writes into a folder sweeps
first, so a kill during any of them leaves nothing that the next command does not remove.
"""

from __future__ import annotations

from ..common.storage import Storage, remove_stale_temporaries
from .layout import swept_trees


def sweep_temporaries(storage: Storage) -> int:
    """Delete the temporary files of dead writers (object stores have none: files go up in one request)."""
    if not storage.is_local:
        return 0
    return sum(remove_stale_temporaries(storage.local(folder), depth=depth) for folder, depth in swept_trees())
