"""Temporary files that killed writers left in an output folder, swept from every tree a command writes.

Files appear whole through a temporary file named after its writer's host and pid (storage.write_atomic); a
writer killed before its rename leaves that file behind. Every command that writes into a folder sweeps
first, so a kill during any of them leaves nothing that the next command does not remove.
"""

from __future__ import annotations

from .storage import Storage, remove_stale_temporaries


def trees() -> tuple[tuple[str, int], ...]:
    """(folder, depth): the folder and depth - 1 levels below it, e.g. report/, images/00000/,
    sprites/64/00000/, thumbs/00000/, atlas/64/."""
    from .report import THUMBS
    from .sheets import ATLAS
    from .sprite_files import SPRITES
    from .writer import IMAGES

    return ("", 2), (IMAGES, 2), (SPRITES, 3), (THUMBS, 2), (ATLAS, 2)


def sweep_temporaries(storage: Storage) -> int:
    """Delete the temporary files of dead writers (object stores have none: files go up in one request)."""
    if not storage.is_local:
        return 0
    return sum(remove_stale_temporaries(storage.local(folder), depth=depth) for folder, depth in trees())
