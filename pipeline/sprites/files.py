"""Where derived sprites go, how they are written and recorded, and whether a record's sprites are current.

The raw canvas (`images/00000/<key>.png`) stays the canonical output; its sprites are derived from it:
`sprites/<label>/00000/<key>.png` (the images' numbered folders mirrored, one tree per label: the target
size, or `full` without sizes). Every file appears whole (storage.py), and each image's record lists its
sprites with the settings that made them, so a change of settings is seen per record.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterable

from ..common.storage import Storage
from ..folder.layout import SPRITES, sprite_url
from ..input.sprite_settings import SpriteSettings


def write_sprites(storage: Storage, image_url: str, rgba, settings: SpriteSettings, compress_level: int) -> list:
    """Derive the sprites of one raw canvas, write them, and return their manifest entries."""
    from .derive import derive

    entries = []
    for sprite in derive(rgba, settings):
        data = encode_sprite(sprite.rgba, compress_level)
        url = sprite_url(image_url, sprite.label)
        storage.write(url, data, moment="sprite_temp_written")
        entries.append(sprite_entry(sprite, url, data, settings))
    return entries


def encode_sprite(rgba, compress_level: int) -> bytes:
    """A plain RGBA PNG (no text chunks: game assets stay small; the manifest says how each was made)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def sprite_entry(sprite, url: str, data: bytes, settings: SpriteSettings) -> dict:
    """One element of a record's `sprites` list (schema.SPRITE)."""
    width, height = sprite.size
    return {
        "label": sprite.label,
        "url": url,
        "width": width,
        "height": height,
        "file_size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "trim_box": _box(sprite.trim_box),
        "content_box": _box(sprite.content_box),
        "settings": settings.to_dict(),
    }


def _box(box) -> dict:
    return dict(zip(("x", "y", "w", "h"), (int(v) for v in box), strict=True))


def read_rgba(storage: Storage, url: str):
    """The raw canvas of a finished image, as the uint8 RGBA array it was written from."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(storage.read_bytes(url))) as image:
        return np.asarray(image.convert("RGBA"))


def outdated(storage: Storage, recorded: Iterable[list | None], settings: SpriteSettings) -> list[bool]:
    """Per record of a finished image: True when its sprites must be derived (again) for `settings`.

    They must when the record has none, was made with other settings, or a file is missing or has another
    size (one listing per folder, no file opened). Inactive settings ask for none: records with sprites differ.
    """
    if not settings.active:
        return [bool(entries) for entries in recorded]
    wanted, listings = settings.to_dict(), {}
    return [
        not entries or any(e["settings"] != wanted or not _present(storage, e, listings) for e in entries)
        for entries in recorded
    ]


def _present(storage: Storage, entry: dict, listings: dict) -> bool:
    folder, _, name = entry["url"].rpartition("/")
    if folder not in listings:
        listings[folder] = storage.sizes(folder)
    return listings[folder].get(name) == entry["file_size"]


def remove_replaced(storage: Storage, old: list | None, new: list | None) -> None:
    """Delete the files of `old` entries that `new` does not name (another label after a settings change)."""
    kept = {e["url"] for e in new or ()}
    for entry in old or ():
        if entry["url"] not in kept:
            storage.remove(entry["url"])


SPRITE_MODES = (None, "fg", "blend2fg")  # records whose image is a transparent foreground (None: before modes)


def sprite_plan(storage: Storage, state, keys: list[str], todo: list[bool], settings: SpriteSettings):
    """For a run's rows (`keys`, with whether each is generated now): (indices of done rows whose sprites are
    outdated, {index: recorded sprites} of rows generated again, whose replaced files go afterwards).

    `state`: the folder's latest records with their `sprites` column (manifest.folder_state).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    at = pc.index_in(pa.array(keys, pa.string()), state.column("id"))
    recorded = state.column("sprites").take(at).to_pylist()
    flags = outdated(storage, (None if redo else r for r, redo in zip(recorded, todo, strict=True)), settings)
    if "mode" in state.column_names:  # RGB layers and `layers` triplets have no sprites to bring up to date
        kept = [mode in SPRITE_MODES for mode in state.column("mode").take(at).to_pylist()]
        flags = [flag and keep for flag, keep in zip(flags, kept, strict=True)]
    restyle = [i for i, (flag, redo) in enumerate(zip(flags, todo, strict=True)) if flag and not redo]
    old = {i: r for i, (r, redo) in enumerate(zip(recorded, todo, strict=True)) if r and redo}
    return restyle, old


def prune_folders(storage: Storage) -> None:
    """Remove the sprite folders left empty by `remove_replaced` (object stores have no folders to remove)."""
    if not storage.is_local or not storage.local(SPRITES).is_dir():
        return
    for folder, _dirs, _files in sorted(os.walk(storage.local(SPRITES)), reverse=True):  # deepest first
        with contextlib.suppress(OSError):  # not empty: kept
            os.rmdir(folder)
