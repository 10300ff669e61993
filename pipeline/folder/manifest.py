"""The manifest: every row's latest record, in input order, merged from the part logs.

A merge writes `manifest.parquet` and `manifest.jsonl` for readers (only once every row has an outcome) and
`parts/checkpoint.parquet`: the same records in the logs' own form (each process's context once, in the
metadata) with the byte offsets of the logs it consumed, so that later starts read the checkpoint's columns and
only what the logs gained since. Nothing is rewritten when nothing changed. At a million rows the records are
~0.46 KB each in Arrow; nothing holds them as Python objects beyond a few thousand at a time.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..common.storage import Storage
from ..input.passthrough import json_text, passthrough_schema, typed_column
from .contexts import INDEX, Contexts
from .layout import CHECKPOINT, KEYS, MANIFEST_JSONL, MANIFEST_PARQUET, RUN_INFO
from .parts import LOG_SCHEMA, part_names, read_new
from .schema import CONTEXT_FIELDS, PART_SCHEMA, SCHEMA, json_line, json_record, manifest_schema

STATE_COLUMNS = ["id", "status", "request_hash", "image", "sha256"]
_CONSUMED, _CONTEXTS, _PASSTHROUGH = b"layerdiffuse.consumed", b"layerdiffuse.contexts", b"layerdiffuse.passthrough"
_TYPES = b"layerdiffuse.passthrough_schema"  # the passthrough columns' Arrow schema, serialized, in base64
CHUNK = 16_384  # rows per row group: memory stays flat while a million rows are written
PIECE = 1_024  # rows turned into Python records at a time (~12 KB each as dicts, ~0.46 KB in Arrow)
_FINISHED_AT = SCHEMA.get_field_index("finished_at")
TAIL = 1 << 16  # bytes read from a manifest.jsonl's end at first (a longer last line: more)


@dataclass(frozen=True)
class Merged:
    rows: int
    unfinished: int  # failed or invalid rows
    rewritten: bool  # False: the manifest already said all of it


def write_keys(storage: Storage, keys: list[str], passthrough: pa.Schema | list[str]) -> None:
    """The table's row keys in input order and its passthrough columns with their types (names alone: text);
    rewritten only when they change."""
    if not isinstance(passthrough, pa.Schema):
        passthrough = passthrough_schema(passthrough)
    table = pa.table({"id": pa.array(keys, pa.string())})
    metadata = {_PASSTHROUGH: json.dumps(passthrough.names).encode(),
                _TYPES: base64.b64encode(passthrough.serialize().to_pybytes())}  # fmt: skip
    try:
        old = pq.read_table(storage.path(KEYS), filesystem=storage.fs)
        if old.column("id").equals(table.column("id")) and old.schema.metadata == metadata:
            return
    except (FileNotFoundError, pa.ArrowInvalid, OSError):
        pass
    storage.write(KEYS, parquet_bytes(table.replace_schema_metadata(metadata)))


def read_keys(storage: Storage) -> tuple[pa.Array, pa.Schema]:
    """(row keys in input order, passthrough columns) of the folder's table; a keys file that is missing or
    damaged is rebuilt from what the folder holds (repair.py)."""
    try:
        table = pq.read_table(storage.path(KEYS), filesystem=storage.fs)
        return table.column("id").combine_chunks(), _passthrough(table.schema.metadata)
    except FileNotFoundError:
        keys = run_info(storage).get("keys")
        if keys is not None:  # a folder of an earlier version: the keys are in run.json
            return pa.array(keys, pa.string()), pa.schema([])
    except (ValueError, KeyError, TypeError):  # a bad footer, metadata that is not ours: a damaged file
        pass
    return rebuild_keys(storage)


def _passthrough(metadata: dict) -> pa.Schema:
    if _TYPES in metadata:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(metadata[_TYPES])))
    return passthrough_schema(json.loads(metadata[_PASSTHROUGH]))  # an earlier version's: every column as text


def folder_state(storage: Storage, columns: list[str] | None = None) -> pa.Table:
    """Every row's latest record (checkpoint, then the logs' new lines), one row per id, any order."""
    stored = None if columns is None else [c for c in columns if c not in CONTEXT_FIELDS]
    if stored is not None and len(stored) < len(columns):
        stored.append(INDEX.name)
    old, consumed, contexts = _checkpoint(storage, stored)
    new, _ = read_new(storage, consumed, stored, contexts)
    if new.num_rows:  # else the checkpoint holds one record per id
        old = _latest(pa.concat_tables([old, new.select(old.column_names)]))
    return contexts.attach(old, tuple(c for c in CONTEXT_FIELDS if columns is None or c in columns))


def merge(storage: Storage, keys: pa.Array | None = None, passthrough: pa.Schema | None = None) -> Merged | None:
    """Write the manifest once every row has an outcome; None while some row has none.

    Any process may call it at any time: the manifest is complete or not written, and writes are atomic.
    """
    if keys is None:
        keys, passthrough = read_keys(storage)
    keys = pa.array(keys, pa.string())
    old, consumed, _ = _checkpoint(storage, ["id"])  # a cheap look first: ids only
    new, _ = read_new(storage, consumed, ["id"])
    if pc.any(pc.invert(pc.is_in(keys, pa.concat_tables([old, new]).column("id")))).as_py():
        return None  # most processes of a launch finish before the last one
    written = manifests_intact(storage, keys)  # else damaged or missing: written again
    if new.num_rows == 0 and written and old.column("id").combine_chunks().equals(keys):
        statuses = _checkpoint(storage, ["status"])[0].column("status")
        return Merged(len(keys), _unfinished(statuses), rewritten=False)  # the checkpoint is in key order
    old, consumed, contexts = _checkpoint(storage)
    new, offsets = read_new(storage, consumed, contexts=contexts)
    records = pa.concat_tables([old, new.select(old.column_names)])
    ids, last = _last_positions(records.column("id"))
    where = pc.index_in(keys, ids)
    if where.null_count:
        return None
    take = last[where.to_numpy()]
    _write(storage, _in_order(records, take), passthrough or pa.schema([]), offsets, contexts)
    return Merged(len(keys), _unfinished(records.column("status").take(take)), rewritten=True)


def manifests_intact(storage: Storage, keys: pa.Array) -> bool:
    """Whether both manifests are whole, judged by their ends: manifest.parquet's footer has a row per key,
    manifest.jsonl ends with a whole line for the last key. No record is read."""
    try:
        footer = pq.read_metadata(storage.path(MANIFEST_PARQUET), filesystem=storage.fs)
        last = json.loads(_last_line(storage, MANIFEST_JSONL))
    except (FileNotFoundError, ValueError):  # missing, a bad footer, a line cut short
        return False
    whole = isinstance(last, dict) and len(keys) > 0 and last.get("id") == keys[-1].as_py()
    return whole and footer.num_rows == len(keys)


def _last_line(storage: Storage, relative: str) -> bytes:
    path = storage.path(relative)
    size, span = storage.fs.size(path), TAIL
    with storage.fs.open(path, "rb") as handle:
        while True:
            start = max(0, size - span)
            handle.seek(start)
            tail = handle.read(size - start)
            if not tail.endswith(b"\n"):
                raise ValueError(f"{relative} ends in the middle of a line")
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            if cut >= 0 or start == 0:
                return tail[cut + 1 :]
            span *= 4


def missing_keys(storage: Storage) -> list[str]:
    """Rows of the folder's table that have no outcome yet."""
    keys, _ = read_keys(storage)
    have = folder_state(storage, ["id"]).column("id")
    return keys.filter(pc.invert(pc.is_in(keys, have))).to_pylist()


def _checkpoint(storage: Storage, columns: list[str] | None = None) -> tuple[pa.Table, dict[str, int], Contexts]:
    """The checkpoint's records, the log offsets it consumed and the contexts its records index into; none when
    it is missing or of an earlier schema (a field it lacks): the logs, which hold every record, are then read
    from their start."""
    schema = LOG_SCHEMA if columns is None else pa.schema([LOG_SCHEMA.field(c) for c in columns])
    try:
        table = pq.read_table(storage.path(CHECKPOINT), filesystem=storage.fs, columns=columns)
    except FileNotFoundError:
        table = seed_checkpoint(storage)
        table = None if table is None else table.select(schema.names)
    except (OSError, pa.ArrowInvalid):
        table = None
    if table is None or not table.schema.remove_metadata().equals(schema):
        return schema.empty_table(), {}, Contexts()
    try:
        consumed, contexts = _checkpoint_metadata(table.schema.metadata or {})
    except (ValueError, KeyError, TypeError):  # damaged: set aside like an earlier schema's, the next merge rewrites it
        return schema.empty_table(), {}, Contexts()
    return table.replace_schema_metadata(None), consumed, contexts


def checkpoint_metadata(offsets: dict[str, int], contexts: Contexts) -> dict[bytes, bytes]:
    """What the checkpoint's metadata holds: the logs' byte offsets it consumed and the contexts."""
    return {_CONSUMED: json.dumps(offsets).encode(), _CONTEXTS: contexts.to_json()}


def _checkpoint_metadata(metadata: dict) -> tuple[dict[str, int], Contexts]:
    consumed, contexts = json.loads(metadata[_CONSUMED]), json.loads(metadata[_CONTEXTS])
    if not all(isinstance(n, str) and type(v) is int for n, v in consumed.items()):
        raise TypeError("not byte offsets of logs")
    if not all(isinstance(c, dict) for c in contexts):
        raise TypeError("not contexts")
    return consumed, Contexts(contexts)


def _last_positions(ids: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(each distinct id, the position of its last record): later parts and later lines win."""
    encoded = pc.dictionary_encode(ids.combine_chunks())
    last = np.full(len(encoded.dictionary), -1, np.int64)
    np.maximum.at(last, encoded.indices.to_numpy(), np.arange(len(ids)))
    return encoded.dictionary, last


def _latest(records: pa.Table) -> pa.Table:
    return _gather(records, _last_positions(records.column("id"))[1])


def _unfinished(statuses: pa.ChunkedArray) -> int:
    return len(statuses) - pc.sum(pc.equal(statuses, "ok")).as_py() if len(statuses) else 0


def _in_order(records: pa.Table, take: np.ndarray) -> Iterator[pa.Table]:
    """The records in `take` order, CHUNK rows at a time (never the whole reordered copy in memory)."""
    return (_gather(records, take[start : start + CHUNK]) for start in range(0, len(take), CHUNK))


def _gather(records: pa.Table, rows: np.ndarray) -> pa.Table:
    """`records.take(rows)` from each chunk in turn: Arrow's take first joins a text column's chunks into one,
    a copy of the whole column on every call (and impossible beyond 2 GB of text)."""
    if not len(rows):
        return records.schema.empty_table()
    batches = records.to_batches()
    starts = np.cumsum([0, *map(len, batches)])
    chunk = np.searchsorted(starts, rows, side="right") - 1
    pieces, positions = [], []
    for index in np.unique(chunk):
        mine = np.flatnonzero(chunk == index)
        pieces.append(batches[index].take(pa.array(rows[mine] - starts[index])))
        positions.append(mine)
    gathered = pa.Table.from_batches(pieces, schema=records.schema)
    return gathered.take(pa.array(np.argsort(np.concatenate(positions))))


def _write(storage: Storage, ordered: Iterator[pa.Table], passthrough: pa.Schema, offsets: dict[str, int],
           contexts: Contexts) -> None:  # fmt: skip
    """manifest.parquet, manifest.jsonl and the checkpoint in one pass, a chunk of rows at a time; they land in
    that order (the checkpoint last: until it does, the logs still count)."""
    schema = manifest_schema(passthrough)
    metadata = checkpoint_metadata(offsets, contexts)
    with (
        storage.open_atomic(CHECKPOINT, moment="manifest_jsonl_written") as checkpoint_handle,
        storage.open_atomic(MANIFEST_JSONL, moment="manifest_parquet_written") as jsonl,
        storage.open_atomic(MANIFEST_PARQUET) as parquet_handle,
        pq.ParquetWriter(parquet_handle, schema) as parquet,
        pq.ParquetWriter(checkpoint_handle, LOG_SCHEMA.with_metadata(metadata)) as checkpoint,
    ):
        for chunk in ordered:
            checkpoint.write_table(chunk)
            records = contexts.attach(chunk)
            extras = [json.loads(text) if text and text != "{}" else {} for text in chunk.column("extra").to_pylist()]
            parquet.write_table(_manifest_table(records, extras, schema))
            for start in range(0, chunk.num_rows, PIECE):
                jsonl.write(_json_lines(records.slice(start, PIECE), extras[start : start + PIECE]))


def _manifest_table(records: pa.Table, extras: list[dict], schema: pa.Schema) -> pa.Table:
    """Log records -> manifest rows, column by column: the passthrough cells come out of `extra` with their
    column's type."""
    passthrough = list(schema)[len(SCHEMA) :]
    cells = [typed_column([extra.get(f.name) for extra in extras], f.type) for f in passthrough]
    return pa.Table.from_arrays([*records.select(SCHEMA.names).columns, *cells], schema=schema)


def _json_lines(records: pa.Table, extras: list[dict]) -> bytes:
    """Log records -> manifest.jsonl lines (`record_from_part`, with the timestamps formatted column-wise)."""
    stamps = pc.strftime(records.column("finished_at"), "%Y-%m-%dT%H:%M:%SZ")  # milliseconds: json_record's form
    rows = records.select(SCHEMA.names).set_column(_FINISHED_AT, "finished_at", stamps).to_pylist()
    return b"".join(json_line({**json_record(row), **extra}) for row, extra in zip(rows, extras, strict=True))


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_run_info(storage: Storage, info: dict) -> None:
    storage.write(RUN_INFO, (json.dumps(info, indent=1, default=str) + "\n").encode())


def read_run_info(storage: Storage) -> dict:
    """What `generate` recorded about the run: input, row count, configuration, statistics."""
    return json.loads(storage.read_bytes(RUN_INFO))


def run_info(storage: Storage) -> dict:
    """`read_run_info`, or {} where run.json is missing or damaged (it is rewritten by every run)."""
    try:
        info = read_run_info(storage)
    except (FileNotFoundError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


# --- derived files rebuilt from what the folder still holds ---


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
