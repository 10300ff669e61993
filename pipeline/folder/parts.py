"""Append-only logs of manifest records, one per process and run (`parts/<stamp>-rank<r>-of-<n>.jsonl`).

A record is appended (and fsynced) only after its image is in place; a line cut short by a crash is ignored,
so its row is simply redone. What is the same for every record of a process (model, environment, rank) is
written once beside its log (`<part>.context.json`). Logs are read back as Arrow tables, from the byte offset
that the last merge consumed: a start reads only what is new.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from ..common.faults import fault_point
from ..common.storage import OutputError, Storage
from ..input.passthrough import json_default, json_text
from .contexts import INDEX, Contexts
from .layout import PARTS, part_context, part_log
from .schema import CONTEXT_FIELDS, PART_SCHEMA, SCHEMA, json_record

LOG_SCHEMA = PART_SCHEMA.append(INDEX)  # records as read: each with the index of its context
BLOCK = 4 << 20  # bytes of a log parsed at a time
_SEGMENT = re.compile(r"(\.\d{6})?\.jsonl$")  # `<part>.jsonl`, or an object store's `<part>.000001.jsonl`


def part_line(record: dict) -> str:
    """A manifest record as one log line: passthrough columns and raw cells as JSON text, no context."""
    known = {k: v for k, v in record.items() if k in PART_SCHEMA.names and k not in CONTEXT_FIELDS}
    known["extra"] = json_text({k: v for k, v in record.items() if k not in SCHEMA.names})
    if record.get("input") is not None:
        known["input"] = json_text(record["input"])
    return json.dumps(known, ensure_ascii=False, default=json_default) + "\n"


def record_from_part(row: dict) -> dict:
    """The inverse of `part_line` (with the context filled in): a record as manifest.jsonl has it."""
    record = json_record({name: row.get(name) for name in SCHEMA.names})
    return {**record, **json.loads(row.get("extra") or "{}")}


class PartWriter:
    """One process's log; created on the first record (a run with nothing to do leaves no file).

    Locally each record is appended and fsynced. Object stores cannot append: there the records of each
    batch go up as one more object (`<part>.000001.jsonl`, ...) by `flush`, after their images.
    Appended by one thread at a time (the post-processing committer, or the main thread for invalid rows).
    """

    def __init__(self, storage: Storage, stem: str):
        self.storage, self.stem = storage, stem
        self.relative = part_log(stem)
        self._handle = None
        self._context: dict = {}
        self._lock = threading.Lock()
        self._buffer: list[str] = []
        self._segments = 0

    def set_context(self, model: dict, environment: dict, rank: int) -> None:
        """Before the first record a model produces; until then the context is empty."""
        self._context = {"model": model, "environment": environment, "rank": rank}
        if self._handle is not None or self._segments:
            self._write_context()

    def _open(self) -> None:
        self._write_context()  # first: a log without one is read as an earlier version's
        self._handle = self.storage.local(self.relative).open("a", encoding="utf-8")

    def _write_context(self) -> None:
        data = json.dumps(self._context, ensure_ascii=False, default=str).encode()
        self.storage.write(part_context(self.stem), data)

    def append(self, record: dict) -> None:
        line = part_line(record)
        with self._lock:
            if not self.storage.is_local:
                self._buffer.append(line)
                return
            try:
                if self._handle is None:
                    self._open()
                self._handle.write(line)
                self._handle.flush()
                os.fsync(self._handle.fileno())
            except OSError as exc:  # a cut-off line is ignored by readers; its row is redone next run
                shown = self.storage.shown(self.relative)
                raise OutputError(exc.errno, f"cannot append to {shown}: {exc.strerror or exc}") from exc
        fault_point("record_appended")

    def flush(self) -> None:
        """Object stores: the records appended since the last flush, as one object written whole."""
        with self._lock:
            if not self._buffer:
                return
            if not self._segments:
                self._write_context()  # first: a log without one is read as an earlier version's
            self._segments += 1
            self.storage.write(part_log(self.stem, self._segments), "".join(self._buffer).encode())
            self._buffer = []
        fault_point("record_appended")

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._handle is not None:
                self._handle.close()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def part_names(storage: Storage) -> list[str]:
    """Log names in the order they win (start time)."""
    return sorted(name for name in storage.sizes(PARTS) if name.endswith(".jsonl"))


def read_new(storage: Storage, consumed: dict[str, int], columns: list[str] | None = None,
             contexts: Contexts | None = None):  # fmt: skip
    """(records appended after `consumed` byte offsets, as one table in log order; the new offsets).

    `columns`: of LOG_SCHEMA, parse only these (a start needs five); default all. The `context` column indexes
    into `contexts`, which the logs' contexts are added to.
    """
    sizes = storage.sizes(PARTS)
    schema = LOG_SCHEMA if columns is None else pa.schema([LOG_SCHEMA.field(c) for c in columns])
    if INDEX.name not in schema.names:
        contexts = None
    elif contexts is None:
        raise ValueError("the context column needs the Contexts it indexes into")
    parsed = pa.schema([f for f in schema if f.name != INDEX.name])
    tables, offsets = [], dict(consumed)
    for name in sorted(name for name in sizes if name.endswith(".jsonl")):  # one listing: logs that other
        offsets[name] = consumed.get(name, 0)  # processes start meanwhile are read next time
        if sizes[name] <= offsets[name]:
            continue
        context = _context(storage, name)
        for data in _whole_lines(storage, f"{PARTS}/{name}", offsets[name]):
            offsets[name] += len(data)
            tables.append(_read_part(data, parsed, context, contexts))
    if not tables:
        return schema.empty_table(), offsets
    return pa.concat_tables(tables).select(schema.names), offsets


def _whole_lines(storage: Storage, relative: str, start: int) -> Iterator[bytes]:
    """The log's whole lines after byte `start`, about BLOCK bytes at a time (memory stays flat however long
    a log grows); a line cut short at the end is left for the next read."""
    with storage.fs.open(storage.path(relative), "rb") as handle:
        handle.seek(start)
        rest = b""
        while block := handle.read(BLOCK):
            data = rest + block
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                yield data[:cut]


def _context(storage: Storage, name: str) -> dict | None:
    """What every record of a log shares; None for a log of an earlier version (whole records)."""
    try:
        return json.loads(storage.read_bytes(part_context(_SEGMENT.sub("", name))))
    except FileNotFoundError:
        return None


def _parse(data: bytes, schema: pa.Schema) -> pa.Table:
    import pyarrow.json as pj

    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        return pj.read_json(io.BytesIO(data), parse_options=options)
    except pa.ArrowInvalid:  # a damaged line in the middle (a disk error): keep every line that parses
        return _parse_lines(data, schema, options)


def _parse_lines(data: bytes, schema: pa.Schema, options) -> pa.Table:
    import pyarrow.json as pj

    tables = []
    for line in data.splitlines(keepends=True):
        try:
            tables.append(pj.read_json(io.BytesIO(line), parse_options=options))
        except pa.ArrowInvalid:
            continue
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _read_part(data: bytes, schema: pa.Schema, context: dict | None, contexts: Contexts | None) -> pa.Table:
    """Records of a block of log lines; with `contexts`, each with the index of its context."""
    if context is None:
        return _legacy(data, schema, contexts)
    if contexts is None:
        return _parse(data, schema)
    parsed = _parse(data, schema if "status" in schema.names else schema.append(PART_SCHEMA.field("status")))
    produced = pc.not_equal(parsed.column("status"), "invalid")  # invalid rows met no model
    index = pc.if_else(produced, pa.scalar(contexts.index(context), INDEX.type), pa.scalar(None, INDEX.type))
    return parsed.select(schema.names).append_column(INDEX, index)


def _legacy(data: bytes, schema: pa.Schema, contexts: Contexts | None) -> pa.Table:
    """Records of a log of an earlier version, whose every line held its context."""
    records = []
    for line in data.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    table = _parse("".join(part_line(r) for r in records).encode(), schema)
    if contexts is None:
        return table
    index = [contexts.index({name: r.get(name) for name in CONTEXT_FIELDS}) for r in records]
    return table.append_column(INDEX, pa.array(index, INDEX.type))
