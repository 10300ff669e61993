"""Derived files that are missing or damaged, found cheaply and rebuilt from what the folder still holds.

Only the images and the part logs are original; the keys file, the checkpoint and the two manifests are derived
from the table and the logs. A damaged one is never trusted: the keys are rebuilt from manifest.parquet or
from records of every row, the manifests by merging again (the checkpoint, when damaged, is ignored by
manifest.py and rewritten by that merge; when lost with every log, it is seeded from manifest.parquet). Damage
is judged by the files' ends alone (the Parquet footer, the last line of manifest.jsonl), so a start still
reads no record to know.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..common.storage import Storage
from ..input.passthrough import json_text
from .contexts import INDEX, Contexts
from .layout import CHECKPOINT, KEYS, MANIFEST_JSONL, MANIFEST_PARQUET
from .manifest import (
    checkpoint_metadata,
    folder_state,
    manifests_intact,
    merge,
    parquet_bytes,
    read_keys,
    run_info,
    write_keys,
)
from .parts import LOG_SCHEMA, part_names
from .schema import CONTEXT_FIELDS, PART_SCHEMA, SCHEMA


class FolderStateError(ValueError):
    """What the folder holds cannot say its rows; the message says how to restore them (exit 2)."""


def rebuild_keys(storage: Storage) -> tuple[pa.Array, pa.Schema]:
    """The table's keys and passthrough columns from manifest.parquet, or from records of every row; written
    to the keys file again."""
    found = _keys_of_manifest(storage) or _keys_of_records(storage)
    if found is None:
        raise FolderStateError(
            f"{storage.shown(KEYS)} is missing or damaged, and the folder holds no whole manifest or record of "
            f"every row to rebuild it from; run `layerdiffuse generate TABLE --out {storage}` again with the "
            "folder's table: it writes the file anew and redoes only rows that have no record left"
        )
    write_keys(storage, found[0].to_pylist(), found[1])
    return found


def _keys_of_manifest(storage: Storage) -> tuple[pa.Array, pa.Schema] | None:
    try:
        ids = pq.read_table(storage.path(MANIFEST_PARQUET), filesystem=storage.fs, columns=["id"])
        schema = pq.read_schema(storage.path(MANIFEST_PARQUET), filesystem=storage.fs)
    except (FileNotFoundError, ValueError):
        return None
    passthrough = pa.schema([field for field in schema if field.name not in SCHEMA.names])
    return ids.column("id").combine_chunks(), passthrough


def _keys_of_records(storage: Storage) -> tuple[pa.Array, pa.Schema] | None:
    """Records in input order (by table row, then image of the row) when there is one for each of the last
    run's rows (run.json says how many); passthrough columns as text, their types being unknown here."""
    state = folder_state(storage, ["id", "row", "image_index", "extra"])
    if not state.num_rows or state.num_rows != run_info(storage).get("total_rows"):
        return None
    state = state.take(pc.sort_indices(state, [("row", "ascending"), ("image_index", "ascending")]))
    names: dict[str, None] = {}
    for extra in state.column("extra").unique().to_pylist():
        names.update(dict.fromkeys(json.loads(extra or "{}")))
    return state.column("id").combine_chunks(), pa.schema([pa.field(name, pa.string()) for name in names])


def repair_manifests(storage: Storage) -> bool:
    """Merge again where a manifest is there but damaged; True when they were rewritten."""
    if not (storage.exists(MANIFEST_PARQUET) or storage.exists(MANIFEST_JSONL)):
        return False  # a run under way, or one that has not merged: nothing to repair
    keys, passthrough = read_keys(storage)
    if manifests_intact(storage, keys):
        return False
    merged = merge(storage, keys, passthrough)
    return merged is not None and merged.rewritten


def seed_checkpoint(storage: Storage) -> pa.Table | None:
    """Where parts/ lost its logs and checkpoint (deleted, or a copy of the folder without it) but
    manifest.parquet is whole, the checkpoint is written from the manifest, so nothing done is redone; the
    checkpoint as written, or None."""
    if part_names(storage) or not storage.exists(MANIFEST_PARQUET):
        return None
    try:
        manifest = pq.read_table(storage.path(MANIFEST_PARQUET), filesystem=storage.fs)
    except ValueError:  # damaged too: the rows are redone
        return None
    records, contexts = _log_records(manifest)
    checkpoint = records.replace_schema_metadata(checkpoint_metadata({}, contexts))
    storage.write(CHECKPOINT, parquet_bytes(checkpoint))
    return checkpoint


def _log_records(manifest: pa.Table) -> tuple[pa.Table, Contexts]:
    """Manifest rows -> records as the logs hold them: passthrough cells as JSON in `extra`, contexts by index."""
    contexts = Contexts()
    produced = [status != "invalid" for status in manifest.column("status").to_pylist()]  # as parts.py counts
    shared = manifest.select(list(CONTEXT_FIELDS)).to_pylist()
    index = [contexts.index(c) if p else None for c, p in zip(shared, produced, strict=True)]
    passthrough = [name for name in manifest.column_names if name not in SCHEMA.names]
    extra = [json_text(cells) for cells in manifest.select(passthrough).to_pylist()]
    columns = [manifest.column(name) for name in PART_SCHEMA.names if name != "extra"]
    columns += [pa.array(extra, pa.string()), pa.array(index, INDEX.type)]
    return pa.Table.from_arrays(columns, schema=LOG_SCHEMA), contexts
