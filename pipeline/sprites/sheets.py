"""`atlas DIR`: the sprites an output folder's manifest lists, packed per label into sheets (packer.py).

Sheets go to `DIR/atlas/<label>/<name>-<n>.png` and `.json`, written whole through storage.py; frames are
named by image key. Only the sprites the latest records list are packed (files of older settings are not).
A command that replaces or removes sprites of a label first removes that label's sheets (`drop_atlases`):
a sheet never shows frames of sprites that are gone or were made with other settings.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ..common.storage import Storage
from ..folder.layout import ATLAS, atlas_folder
from ..folder.manifest import folder_state, read_keys
from ..folder.schema import Status
from ..folder.sweep import sweep_temporaries
from .files import read_rgba
from .packer import AtlasError, AtlasInput, atlas_files, stale_files


@dataclass(frozen=True)
class Packed:
    label: str
    frames: int
    files: tuple[str, ...]  # written, relative to DIR


def pack_folder(storage: Storage, label: str | None = None, max_size: int = 2048, padding: int = 2,
                trim: bool = False, name: str = "sheet") -> list[Packed]:  # fmt: skip
    """Pack each label's sprites (or only `label`'s); AtlasError says what is missing and how to make it."""
    sweep_temporaries(storage)
    by_label = listed_sprites(storage)
    if not by_label:
        raise AtlasError(
            f"{storage.shown('')} has no sprites to pack; derive them first, e.g. "
            "`layerdiffuse sprites DIR --trim --pad 2 --sizes 64` (or generate with those flags)"
        )
    if label is not None and label not in by_label:
        raise AtlasError(f"no sprites labelled {label!r} in {storage.shown('')}; labels: {', '.join(by_label)}")
    labels = [label] if label is not None else list(by_label)
    return [_pack_label(storage, lab, by_label[lab], max_size, padding, trim, name) for lab in labels]


def listed_sprites(storage: Storage) -> dict[str, list[tuple[str, str]]]:
    """{label: [(image key, sprite url), ...]} of the finished images, in the table's order."""
    keys, _ = read_keys(storage)
    state = folder_state(storage, ["id", "status", "sprites"])
    records = state.take(pc.drop_null(pc.index_in(pa.array(keys, pa.string()), state.column("id"))))
    records = records.filter(pc.fill_null(pc.equal(records.column("status"), Status.OK.value), False))
    by_label: dict[str, list[tuple[str, str]]] = {}
    for key, entries in zip(records.column("id").to_pylist(), records.column("sprites").to_pylist(), strict=True):
        for entry in entries or ():
            by_label.setdefault(entry["label"], []).append((key, entry["url"]))
    return by_label


def _pack_label(storage: Storage, label: str, sprites: list[tuple[str, str]], max_size: int, padding: int,
                trim: bool, name: str) -> Packed:  # fmt: skip
    inputs = [AtlasInput(key, read_rgba(storage, url)) for key, url in sprites]
    try:
        files = atlas_files(inputs, name, max_size, padding, trim)
    except AtlasError as exc:
        raise AtlasError(f"sprites {label}: {exc}") from None
    folder = atlas_folder(label)
    for file_name, data in files.items():
        storage.write(f"{folder}/{file_name}", data, moment="sheet_temp_written")
    for stale in stale_files(list(storage.sizes(folder)), name, len(files) // 2):
        storage.remove(f"{folder}/{stale}")
    return Packed(label, len(inputs), tuple(f"{folder}/{n}" for n in files))


def drop_atlases(storage: Storage, recorded: Iterable[list | None]) -> list[str]:
    """Remove the sheets of every label in these recorded sprite lists (sprites about to be replaced or
    removed); returns the labels whose sheets were there. `atlas DIR` packs the new sprites again."""
    dropped = []
    for label in sorted({entry["label"] for entries in recorded for entry in entries or ()}):
        folder = atlas_folder(label)
        sheets = [name for name in storage.sizes(folder) if not name.startswith(".")]  # not a writer's temporary
        for name in sheets:
            storage.remove(f"{folder}/{name}")
        if storage.is_local:
            for empty in (folder, ATLAS):
                with contextlib.suppress(OSError):  # not empty: kept
                    os.rmdir(storage.local(empty))
        dropped += [label] if sheets else []
    return dropped
