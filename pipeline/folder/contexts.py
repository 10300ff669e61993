"""What every record of a process shares (model, environment, rank), kept once; records hold its index.

A million records of eight processes then hold eight contexts instead of a million copies (~170 bytes a row
in Arrow). The logs keep one context file per process; the checkpoint keeps the list in its metadata.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from .schema import CONTEXT_FIELDS, SCHEMA

INDEX = pa.field("context", pa.int32())  # a record's position in Contexts; null where none (invalid rows)


class Contexts:
    def __init__(self, known: list[dict] | None = None):
        self.items: list[dict] = []
        self._positions: dict[str, int] = {}
        self._columns: dict[str, pa.Array] = {}
        for context in known or []:
            self.index(context)

    def index(self, context: dict) -> int:
        """The position of `context`, added when new (equal contexts share one)."""
        key = json.dumps(context, sort_keys=True, default=str)
        if key not in self._positions:
            self._positions[key] = len(self.items)
            self.items.append(context)
            self._columns = {}
        return self._positions[key]

    def attach(self, records: pa.Table, names: tuple[str, ...] = CONTEXT_FIELDS) -> pa.Table:
        """`records` with the named context fields in place of the index."""
        if INDEX.name not in records.column_names:
            return records
        index = records.column(INDEX.name)
        table = records.drop_columns([INDEX.name])
        for name in names:
            table = table.append_column(SCHEMA.field(name), pc.take(self._column(name), index))
        return table

    def to_json(self) -> bytes:
        return json.dumps(self.items, ensure_ascii=False, default=str).encode()

    def _column(self, name: str) -> pa.Array:
        if name not in self._columns:
            self._columns[name] = pa.array([c.get(name) for c in self.items], SCHEMA.field(name).type)
        return self._columns[name]
