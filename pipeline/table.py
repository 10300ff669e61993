"""CSV / Parquet / JSON Lines -> validated rows with stable keys. Bad cells make invalid rows, never a crash."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .cells import CellError, column_rules, missing, show
from .config import Defaults
from .determinism import derive_seed
from .records import InvalidRow, Row
from .schema import RESERVED_COLUMNS

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class TableError(ValueError):
    """The table as a whole cannot be used (unreadable, empty, no prompt column, ...)."""


@dataclass(frozen=True)
class Table:
    path: Path
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    invalid: tuple[InvalidRow, ...]

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.invalid)

    def without_safety_checker(self) -> Table:
        """The run turned the checker off: no row asks for it, whatever its column says."""
        rows = tuple(replace(r, enable_safety_checker=False) for r in self.rows)
        return replace(self, rows=rows)

    @property
    def keys(self) -> list[str]:
        """Row keys in input order, valid and invalid alike."""
        return [r.key for r in sorted([*self.rows, *self.invalid], key=lambda r: r.number)]


def load_table(path: str | Path, defaults: Defaults, limit: int | None = None) -> Table:
    """Read and validate a table; only the first `limit` data rows are kept when given."""
    path = Path(path)
    columns, records = read_records(path)
    if "prompt" not in columns:
        raise TableError(f"{path}: no 'prompt' column (columns found: {', '.join(columns) or 'none'}); "
                         "add a 'prompt' column with one text prompt per row")  # fmt: skip
    clashes = sorted(set(columns) & RESERVED_COLUMNS)
    if clashes:
        raise TableError(f"{path}: column(s) {clashes} clash with manifest fields; rename them")
    if not records:
        raise TableError(f"{path}: the table has a header but no rows; add at least one row")
    if limit is not None:
        records = records[:limit]
    rows, invalid = validate_rows(path, records, defaults)
    return Table(path, tuple(columns), tuple(rows), tuple(invalid))


def read_records(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and one dict per data row, with the file's own types (CSV cells are all text)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TableError(f"{path}: unknown table type {path.suffix!r}; use .csv, .parquet or .jsonl")
    if path.is_dir():
        raise TableError(f"{path}: is a folder; give a .csv, .parquet or .jsonl file")
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise TableError(f"{path}: the file is empty; it needs a header with a 'prompt' column and rows")
    try:
        return {"csv": _read_csv, "parquet": _read_parquet, "jsonl": _read_jsonl}[kind](path)
    except TableError:
        raise
    except UnicodeDecodeError as exc:
        raise TableError(f"{path}: not valid UTF-8 at byte {exc.start}; re-save the file as UTF-8") from exc
    except Exception as exc:  # pyarrow/pandas parse errors: a damaged or mislabelled file
        raise TableError(f"{path}: cannot read as {kind}: {type(exc).__name__}: {exc}") from exc


def _read_csv(path: Path):
    import pandas as pd

    # All cells as text (typed and range-checked per cell below); the BOM is dropped; quoted
    # newlines and commas stay inside their cell.
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", engine="c")
    return [str(c) for c in frame.columns], frame.to_dict("records")


def _read_parquet(path: Path):
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return list(table.column_names), table.to_pylist()


def _read_jsonl(path: Path):
    records, columns = [], {}
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TableError(f"{path}: line {number} is not valid JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise TableError(f'{path}: line {number} must be a JSON object like {{"prompt": "..."}}')
            columns.update(dict.fromkeys(record))
            records.append(record)
    return list(columns), [{c: r.get(c) for c in columns} for r in records]


def validate_rows(path: Path, records: list[dict], defaults: Defaults) -> tuple[list[Row], list[InvalidRow]]:
    rows, invalid, seen = [], [], {}
    for number, record in enumerate(records, 1):
        key, errors = _row_key(record, number)
        if key.casefold() in seen:
            errors.append(f"column 'id': value {key!r} is also used by row {seen[key.casefold()]}; ids must be "
                          "unique (compared ignoring case, as some file systems do)")  # fmt: skip
            key = f"row-{number:06d}"  # the duplicate is invalid; its record needs a key of its own
            while key.casefold() in seen:
                key += "_"
        seen[key.casefold()] = number
        values, cell_errors = _parse_cells(record, defaults)
        errors += cell_errors
        if errors:
            where = f"{path}: row {number}"
            invalid.append(InvalidRow(number, key, tuple(f"{where}, {e}" for e in errors), record))
            continue
        if values["seed"] is None:
            values["seed"] = derive_seed(defaults.seed, key)
        extra = {c: v for c, v in record.items() if c != "id" and c not in values}
        rows.append(Row(number=number, key=key, extra=extra, **values))
    return rows, invalid


def _row_key(record: dict, number: int) -> tuple[str, list[str]]:
    value = record.get("id")
    if missing(value):
        return f"row-{number:06d}", []
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value) or value.endswith("."):
        shown = value if isinstance(value, str) else type(value).__name__
        return f"row-{number:06d}", [
            f"column 'id': value {show(shown)} is not a safe file name; use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', '\\', spaces or leading dots)"
        ]
    return value, []


def _parse_cells(record: dict, d: Defaults) -> tuple[dict[str, Any], list[str]]:
    values, errors = {}, []
    for column, (parse, default) in column_rules(d).items():
        raw = record.get(column)
        try:
            if not missing(raw):
                values[column] = parse(raw)
            elif column == "prompt" and default is None:
                raise CellError("is empty; every row needs a prompt (or pass --allow-empty-prompt)")
            else:
                values[column] = default
        except CellError as exc:
            errors.append(f"column {column!r}: value {show(raw)} {exc}")
    return values, errors
