"""Sprites derived again from the raw canvases of finished images, without the model (`sprites DIR`, and
`generate` when only the sprite settings changed).

The updated records go to new part logs and the manifest is merged from them as after a run (the latest
record of an image wins). A part log carries one context (model, environment, rank) for all its records,
so records are written to one new log per context they came with: provenance stays as it was.
The folder's sprite settings are kept in `run.json` (`config.sprites`): a later `generate` without sprite
settings of its own derives new images' sprites with them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from ..common.storage import Storage
from ..folder.layout import RUN_INFO, part_stem
from ..folder.manifest import folder_state, merge, read_keys, read_run_info, write_run_info
from ..folder.parts import PartWriter, record_from_part
from ..folder.schema import CONTEXT_FIELDS, Status
from ..folder.sweep import sweep_temporaries
from ..input.config import ConfigError
from ..input.sprite_settings import SpriteSettings
from .files import outdated, prune_folders, read_rgba, remove_replaced, write_sprites
from .sheets import drop_atlases

STATE = ["id", "status", "image", "sprites", "mode"]
REMOVE_EVERY = 256  # records sent up (object stores) before the sprite files they replace are deleted


@dataclass(frozen=True)
class Refreshed:
    derived: int  # images whose sprites were derived (or removed) now
    current: int  # finished images whose sprites were already as asked
    manifest_written: bool  # False while some row of the table has no outcome yet (the parts hold the records)
    dropped_atlases: tuple[str, ...] = ()  # labels whose sheets were removed: their sprites changed


class Rederived(NamedTuple):
    done: int  # records derived again
    dropped_atlases: list[str]  # labels whose sheets were removed first


def refresh_sprites(storage: Storage, settings: SpriteSettings, compress_level: int = 6) -> Refreshed:
    """Bring every finished image's sprites to `settings` (inactive settings remove them), then merge."""
    sweep_temporaries(storage)
    keys, _ = read_keys(storage)
    flags, ids = outdated_ids(storage, keys, settings)
    derived, dropped = rederive(storage, records_of(storage, ids), settings, compress_level, part_stem(0, 1))
    remember_settings(storage, settings)
    merged = merge(storage) if derived else None
    return Refreshed(derived, len(flags) - derived, merged is not None or not derived, tuple(dropped))


def outdated_ids(storage: Storage, keys, settings: SpriteSettings) -> tuple[list[bool], list[str]]:
    """(per finished image of `keys`: whether its sprites differ from `settings`; the ids of those that do)."""
    state = folder_state(storage, STATE)
    records = state.take(pc.drop_null(pc.index_in(pa.array(keys, pa.string()), state.column("id"))))
    finished = pc.and_(pc.equal(records.column("status"), Status.OK.value), pc.is_valid(records.column("image")))
    foreground = pc.or_kleene(pc.is_null(records.column("mode")), pc.is_in(records.column("mode"),
                              pa.array(["fg", "blend2fg"])))  # fmt: skip
    finished = pc.and_(finished, foreground)  # RGB layers and `layers` triplets have no sprites
    records = records.filter(pc.fill_null(finished, False))
    flags = outdated(storage, records.column("sprites").to_pylist(), settings)
    return flags, records.column("id").filter(pa.array(flags, pa.bool_())).to_pylist()


def records_of(storage: Storage, ids: list[str]) -> list[dict]:
    """The latest whole records of these ids, as manifest.jsonl has them."""
    if not ids:
        return []
    state = folder_state(storage)
    chosen = state.filter(pc.is_in(state.column("id"), pa.array(ids, pa.string())))
    return [record_from_part(row) for row in chosen.to_pylist()]


def rederive(storage: Storage, records: list[dict], settings: SpriteSettings, compress_level: int, stem: str,
             stop: threading.Event | None = None) -> Rederived:  # fmt: skip
    """Derive each record's sprites from its raw PNG, append the updated records.

    The sheets of the labels whose sprites change go first (a kill later leaves no sheet of replaced
    sprites); files of the old sprites that the new ones do not replace go once the new record is appended.
    """
    dropped = drop_atlases(storage, (record.get("sprites") for record in records))
    done = 0
    for n, (context, group) in enumerate(_by_context(records).items()):
        with PartWriter(storage, f"{stem}-sprites{n}") as part:
            part.set_context(**json.loads(context))
            replaced: list[tuple] = []
            for record in group:
                if stop is not None and stop.is_set():
                    break
                url = record["image"]["url"]
                new = write_sprites(storage, url, read_rgba(storage, url), settings, compress_level) \
                    if settings.active else None  # fmt: skip
                part.append({**record, "sprites": new})
                replaced.append((record.get("sprites"), new))
                done += 1
                if len(replaced) == REMOVE_EVERY:
                    _remove_recorded(storage, part, replaced)
            _remove_recorded(storage, part, replaced)
        if stop is not None and stop.is_set():
            return Rederived(done, dropped)
    prune_folders(storage)
    return Rederived(done, dropped)


def _remove_recorded(storage: Storage, part: PartWriter, replaced: list[tuple]) -> None:
    """Old sprite files go once the records that replace them are stored (on object stores: sent up)."""
    part.flush()
    for old, new in replaced:
        remove_replaced(storage, old, new)
    replaced.clear()


def _by_context(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for record in records:
        context = {name: record.get(name) for name in CONTEXT_FIELDS}
        groups.setdefault(json.dumps(context, sort_keys=True, default=str), []).append(record)
    return groups


def remembered_settings(storage: Storage) -> SpriteSettings:
    """The folder's sprite settings (run.json), or none when it has no record of any."""
    try:
        recorded = read_run_info(storage).get("config", {}).get("sprites")
    except (FileNotFoundError, ValueError):
        return SpriteSettings()
    try:
        return SpriteSettings(**recorded) if recorded else SpriteSettings()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{storage.shown(RUN_INFO)}: config.sprites: {exc}; fix or delete that section") from None


def remember_settings(storage: Storage, settings: SpriteSettings) -> None:
    try:
        info = read_run_info(storage)
    except (FileNotFoundError, ValueError):
        return  # not written by generate yet: its first run records its own settings
    info.setdefault("config", {})["sprites"] = settings.to_dict()
    write_run_info(storage, info)
