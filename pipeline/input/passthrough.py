"""A table's passthrough cells in the manifest: any Arrow type a table can hold, one JSON form for it.

The part logs and manifest.jsonl hold a cell's JSON form (ISO 8601 text for dates, times, timestamps and
durations, base64 for bytes, exact text for decimals, lists and objects element by element); manifest.parquet
holds the cell with its column's own Arrow type again (`typed_column`), so nothing is lost on the way.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal

import pyarrow as pa

from .cells import valid_text


def json_default(value):
    """The JSON form of a cell value that JSON has no type for (the `default` of json.dumps / orjson)."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()  # a pandas Timestamp keeps its nanoseconds
    if isinstance(value, dt.timedelta):
        import pandas as pd

        return pd.Timedelta(value).isoformat()  # ISO 8601, exact to the nanosecond: P1DT0H0M0.000005S
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)  # exact, as a JSON number would not be
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    return str(value)  # anything else (a UUID, ...) as its text


def json_value(value):
    """A cell as pyarrow's to_pylist gives it -> its JSON form (what json.loads of its JSON text gives)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return json_value(json_default(value))


def json_text(value) -> str:
    return json.dumps(json_value(value), ensure_ascii=False)


def text_cell(value) -> str | None:
    """A cell of a text column in manifest.parquet: text unchanged, any other value as its JSON."""
    if value is None:
        return None
    return valid_text(value) if isinstance(value, str) else json_text(value)


def typed_column(values: list, type: pa.DataType) -> pa.Array:
    """JSON forms of a column's cells -> the column with its Arrow type; a cell that is not of that type (a
    record of an earlier table whose column held something else) becomes null."""
    if pa.types.is_string(type) or pa.types.is_large_string(type):
        return pa.array([text_cell(v) for v in values], type)
    try:
        return pa.array([_from_json(v, type) for v in values], type)
    except (pa.ArrowException, ValueError, TypeError, AttributeError, KeyError):
        return pa.array([_or_null(v, type) for v in values], type)


def _or_null(value, type: pa.DataType):
    try:
        decoded = _from_json(value, type)
        pa.array([decoded], type)
        return decoded
    except (pa.ArrowException, ValueError, TypeError, AttributeError, KeyError):
        return None


def _from_json(value, type: pa.DataType):
    """One cell's JSON form -> a value pyarrow takes for `type` (the inverse of `json_value`)."""
    if value is None:
        return None
    if pa.types.is_struct(type):
        return {field.name: _from_json(value.get(field.name), field.type) for field in type}
    if pa.types.is_map(type):
        return [(_from_json(k, type.key_type), _from_json(v, type.item_type)) for k, v in value]
    if pa.types.is_list(type) or pa.types.is_large_list(type) or pa.types.is_fixed_size_list(type):
        return [_from_json(v, type.value_type) for v in value]
    if pa.types.is_dictionary(type):
        return _from_json(value, type.value_type)
    if pa.types.is_binary(type) or pa.types.is_large_binary(type) or pa.types.is_fixed_size_binary(type):
        return base64.b64decode(value, validate=True)
    return _scalar(value, type)


def _scalar(value, type: pa.DataType):
    if pa.types.is_timestamp(type) or pa.types.is_duration(type):
        import pandas as pd  # parses ISO 8601 to the nanosecond, as Python's own types cannot

        return (pd.Timestamp if pa.types.is_timestamp(type) else pd.Timedelta)(value)
    if pa.types.is_date(type):
        return dt.date.fromisoformat(value)
    if pa.types.is_time(type):
        return dt.time.fromisoformat(value)
    if pa.types.is_decimal(type):
        return Decimal(value)
    return value


def passthrough_schema(names: list[str], types: dict[str, pa.DataType] | None = None) -> pa.Schema:
    """The passthrough columns as manifest.parquet holds them: a Parquet table's with their own Arrow types,
    the others (CSV, JSON Lines) as text."""
    return pa.schema([pa.field(name, (types or {}).get(name, pa.string())) for name in names])
