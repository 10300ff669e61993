"""CSV / Parquet / JSON Lines -> validated rows with stable keys. Bad cells make invalid rows, never a crash.

Rows are kept column by column: a table of a million rows is a few lists, not a million objects; a `Row` is
made only for the rows a process generates.
"""

from __future__ import annotations

import io
import json
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from ..common.names import SAFE_NAME
from ..common.storage import StorageError, display, locate, scrub
from .cells import missing, parse_column, show, unwritable
from .config import Defaults, TemplateConfig
from .layer_inputs import INPUT_COLUMNS, parse_inputs, row_kind, table_folder
from .rows import BATCH_FIELDS, PARAM_COLUMNS, InvalidRow, Row
from .seeds import derive_seed
from .variations import expand_columns

TABLE_COLUMNS = ("id", "num_images", "loras")  # read by the table stage itself: not passed through
LORAS = "loras"  # the optional per-row LoRA column (`path:weight; path:weight`)
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class TableError(ValueError):
    """The table as a whole cannot be used (unreadable, empty, no prompt column, ...)."""


@dataclass(frozen=True)
class RowColumns:
    """The valid rows, column by column, in input order."""

    numbers: list[int]
    keys: list[str]
    params: dict[str, list]  # every PARAM_COLUMNS entry, resolved
    extra: dict[str, list]  # passthrough columns, as read
    loras: list[tuple] | None = None  # the `loras` column as LoraRef tuples; None: the table has none
    expansion: dict[str, list] = field(default_factory=dict)  # Row's image fields, once rows give several images
    inputs: dict[str, list] = field(default_factory=dict)  # INPUT_COLUMNS, resolved; {}: no row uses any

    def __len__(self) -> int:
        return len(self.keys)

    def row(self, i: int) -> Row:
        params = {name: values[i] for name, values in self.params.items()}
        extra = {name: values[i] for name, values in self.extra.items()}
        loras = self.loras[i] if self.loras is not None else ()
        image = {name: values[i] for name, values in self.expansion.items()}
        inputs = {name: values[i] for name, values in self.inputs.items()}
        return Row(number=self.numbers[i], key=self.keys[i], extra=extra, loras=loras, **params, **image, **inputs)

    def signatures(self) -> list[tuple]:
        """Per row, the fields that decide which rows batch together."""
        return list(zip(*(self._column(name) for name in BATCH_FIELDS), strict=True))

    def _column(self, name: str) -> list:
        if name == "loras":
            return self.loras if self.loras is not None else [()] * len(self)
        if name == "kind":
            return self.kinds()
        return self.params[name]

    def kinds(self) -> list:
        """Per row, `layer_inputs.row_kind` (None for every row of a table without inputs)."""
        if not self.inputs:
            return [None] * len(self)
        columns = (self.inputs[name] for name in ("mode", "image", "hires_scale", "background"))
        return [row_kind(*values) for values in zip(*columns, strict=True)]


@dataclass(frozen=True)
class Table:
    path: str  # as the user gave it (a URL without credentials)
    columns: tuple[str, ...]
    valid: RowColumns  # one entry per image: a row asking for several images gives several
    invalid: tuple[InvalidRow, ...]
    row_count: int  # data rows read from the file
    types: dict = field(default_factory=dict)  # {column: Arrow type} of a Parquet table; others are text

    @property
    def passthrough(self):
        """The passthrough columns as manifest.parquet holds them (pyarrow.Schema)."""
        from .passthrough import passthrough_schema

        return passthrough_schema(list(self.valid.extra), self.types)

    @property
    def total(self) -> int:
        """Records of the manifest: one per image, one per invalid row."""
        return len(self.valid) + len(self.invalid)

    def without_safety_checker(self) -> Table:
        """The run turned the checker off: no row asks for it, whatever its column says."""
        params = {**self.valid.params, "enable_safety_checker": [False] * len(self.valid)}
        return replace(self, valid=replace(self.valid, params=params))

    @property
    def keys(self) -> list[str]:
        """Record keys in input order (a row's images together), valid and invalid alike."""
        if "position" in self.valid.expansion:
            return _placed_keys(self.valid, self.invalid)
        keys = [""] * self.total
        for number, key in zip(self.valid.numbers, self.valid.keys, strict=True):
            keys[number - 1] = key
        for row in self.invalid:
            keys[row.number - 1] = row.key
        return keys


def _placed_keys(valid: RowColumns, invalid: tuple[InvalidRow, ...]) -> list[str]:
    keys = [""] * (len(valid) + len(invalid))
    for position, key in zip(valid.expansion["position"], valid.keys, strict=True):
        keys[position] = key
    gaps = (i for i, key in enumerate(keys) if not key)  # invalid rows fill the places between, in order
    for position, row in zip(gaps, invalid, strict=True):
        keys[position] = row.key
    return keys


def load_table(path: str | Path, defaults: Defaults, limit: int | None = None,
               templates: TemplateConfig | None = None, reserved: Collection[str] = ()) -> Table:  # fmt: skip
    """Read and validate a table (a local path or an fsspec URL); only the first `limit` data rows are kept
    when given.

    Rows that ask for several images, or whose prompt is a template, become one entry per image
    (variations.py); `templates` says how templates expand (default: random draws, no wildcards). `reserved`:
    column names the table may not use (the manifest's own fields, folder/schema.py).
    """
    source = path
    names, columns, types = read_columns(str(path))
    path = display(str(path))
    if "prompt" not in names:
        raise TableError(f"{path}: no 'prompt' column (columns found: {', '.join(names) or 'none'}); "
                         "add a 'prompt' column with one text prompt per row")  # fmt: skip
    clashes = sorted(set(names) & set(reserved))
    if clashes:
        raise TableError(f"{path}: column(s) {clashes} clash with manifest fields; rename them")
    if not columns["prompt"]:
        raise TableError(f"{path}: the table has a header but no rows; add at least one row")
    if limit is not None:
        columns = {name: values[:limit] for name, values in columns.items()}
    base = table_folder(str(source))
    valid, invalid = validate_columns(path, names, columns, defaults, templates or TemplateConfig(), base)
    return Table(path, tuple(names), valid, tuple(invalid), len(columns["prompt"]), types)


def read_columns(source: str) -> tuple[list[str], dict[str, list], dict]:
    """Column names, each column's cells with the file's own types (CSV cells are all text), and a Parquet
    table's Arrow type of each column (none for CSV and JSON Lines)."""
    location = display(source)  # messages never show credentials
    try:
        fs, path = locate(source)
        info = fs.info(path)
    except StorageError as exc:
        raise TableError(str(exc)) from None
    except FileNotFoundError:
        raise TableError(f"{location}: no such file") from None
    except PermissionError:
        raise TableError(f"{location}: access denied; check the credentials of its storage") from None
    except Exception as exc:  # the storage refused the location itself (a bad bucket name, ...)
        raise TableError(f"{location}: cannot open: {type(exc).__name__}: {scrub(str(exc), source)}") from None
    kind = SUFFIXES.get(PurePosixPath(path).suffix.lower())
    if kind is None:
        suffix = PurePosixPath(path).suffix
        raise TableError(f"{location}: unknown table type {suffix!r}; use .csv, .parquet or .jsonl")
    if info["type"] == "directory":
        raise TableError(f"{location}: is a folder; give a .csv, .parquet or .jsonl file")
    if not info.get("size"):
        raise TableError(f"{location}: the file is empty; it needs a header with a 'prompt' column and rows")
    try:
        with fs.open(path, "rb") as handle:
            return {"csv": _read_csv, "parquet": _read_parquet, "jsonl": _read_jsonl}[kind](handle, location)
    except TableError:
        raise
    except UnicodeDecodeError as exc:
        raise TableError(f"{location}: not valid UTF-8 at byte {exc.start}; re-save the file as UTF-8") from exc
    except Exception as exc:  # pyarrow/pandas parse errors: a damaged or mislabelled file
        raise TableError(f"{location}: cannot read as {kind}: {type(exc).__name__}: {exc}") from exc


def _read_csv(handle, _location: str):
    import pandas as pd

    # All cells as text (typed and range-checked per cell below); the BOM is dropped; quoted
    # newlines and commas stay inside their cell.
    frame = pd.read_csv(handle, dtype=str, keep_default_na=False, encoding="utf-8-sig", engine="c")
    names = [str(c) for c in frame.columns]
    return names, {name: frame[column].tolist() for name, column in zip(names, frame.columns, strict=True)}, {}


def _read_parquet(handle, _location: str):
    import pyarrow.parquet as pq

    table = pq.read_table(handle)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    return list(table.column_names), columns, {field.name: field.type for field in table.schema}


def _read_jsonl(handle, path: str):
    records, columns = [], {}
    with io.TextIOWrapper(handle, encoding="utf-8-sig") as lines:
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
    return list(columns), {c: [r.get(c) for r in records] for c in columns}, {}


def validate_columns(path: str, names: list[str], columns: dict[str, list], defaults: Defaults,
                     templates: TemplateConfig | None = None, base: str | None = None):  # fmt: skip
    """(the valid images as columns, the invalid rows); every problem names the file, row and column.
    `base`: the table's folder, against which relative input image paths resolve."""
    count = len(columns["prompt"])
    keys, errors = _keys(columns.get("id") or [None] * count)
    params = {}
    for name in PARAM_COLUMNS:
        if name in columns:
            params[name], cell_errors = parse_column(name, columns[name], defaults)
            for position, message in cell_errors.items():
                errors.setdefault(position, []).append(message)
        else:
            params[name] = parse_column(name, [None], defaults)[0] * count  # the default, shared
    loras = None
    if LORAS in columns:  # only a table with the column pays for it
        loras, cell_errors = parse_column(LORAS, columns[LORAS], defaults)
        for position, message in cell_errors.items():
            errors.setdefault(position, []).append(message)
    inputs = parse_inputs(columns, defaults, params, base, errors)
    counts = _image_counts(columns, defaults, count, errors)
    extra_names = [n for n in names if n not in TABLE_COLUMNS and n not in PARAM_COLUMNS and n not in INPUT_COLUMNS]
    _unwritable_cells(columns, extra_names, errors)
    invalid = [
        InvalidRow(i + 1, keys[i], tuple(f"{path}: row {i + 1}, {e}" for e in errors[i]),
                   {n: columns[n][i] for n in names})
        for i in sorted(errors)
    ]  # fmt: skip
    good = _without(range(count), errors)
    params = {name: _without(values, errors) for name, values in params.items()}
    keys = _without(keys, errors)
    seeds = zip(params["seed"], keys, strict=True)
    params["seed"] = [derive_seed(defaults.seed, key) if seed is None else seed for seed, key in seeds]
    extra = {name: _without(columns[name], errors) for name in extra_names}
    loras = None if loras is None else _without(loras, errors)
    inputs = {name: _without(values, errors) for name, values in inputs.items()}
    valid = RowColumns([i + 1 for i in good], keys, params, extra, loras, inputs=inputs)
    counts = None if counts is None else _without(counts, errors)
    cells = {n: columns[n] for n in names}
    return expand_columns(
        path, valid, invalid, counts, cells, templates or TemplateConfig(), defaults.allow_empty_prompt
    )


def _image_counts(columns: dict[str, list], defaults: Defaults, count: int, errors: dict) -> list | None:
    """Each row's num_images; None when every row gives one image (no column, default 1): no work at all."""
    if "num_images" not in columns:
        return None if defaults.num_images == 1 else [defaults.num_images] * count
    counts, cell_errors = parse_column("num_images", columns["num_images"], defaults)
    for position, message in cell_errors.items():
        errors.setdefault(position, []).append(message)
    return counts


def _unwritable_cells(columns: dict[str, list], names: list[str], errors: dict) -> None:
    """Passthrough cells that no manifest can hold (text with a lone surrogate, from a JSON escape)."""
    for name in names:
        for position, value in enumerate(columns[name]):
            if problem := unwritable(value):
                errors.setdefault(position, []).append(f"column {name!r}: value {show(value)} {problem}")


def _without(values, errors: dict) -> list:
    return list(values) if not errors else [v for i, v in enumerate(values) if i not in errors]


def _keys(ids: list) -> tuple[list[str], dict[int, list[str]]]:
    """Each row's key (its id, or `row-000001` from its position) and the problems of bad or repeated ids."""
    keys, errors, seen = [], {}, {}
    for position, value in enumerate(ids):
        number = position + 1
        key, problems = _row_key(value, number)
        folded = key.casefold()
        if folded in seen:
            problems.append(f"column 'id': value {key!r} is also used by row {seen[folded]}; ids must be "
                            "unique (compared ignoring case, as some file systems do)")  # fmt: skip
            key = f"row-{number:06d}"  # the duplicate is invalid; its record needs a key of its own
            while key.casefold() in seen:
                key += "_"
            folded = key.casefold()
        seen[folded] = number
        keys.append(key)
        if problems:
            errors[position] = problems
    return keys, errors


def _row_key(value, number: int) -> tuple[str, list[str]]:
    if type(value) is str and SAFE_NAME.fullmatch(value) and not value.endswith("."):
        return value, []
    if missing(value):
        return f"row-{number:06d}", []
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or value.endswith("."):
        shown = value if isinstance(value, str) else type(value).__name__
        return f"row-{number:06d}", [
            f"column 'id': value {show(shown)} is not a safe file name; use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', '\\', spaces or leading dots)"
        ]
    return value, []
