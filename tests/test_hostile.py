"""Hostile tables: every case ends in a precise message and a documented exit code, never a traceback."""

import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import cli
from pipeline.input.cells import MAX_SEED
from pipeline.input.config import Defaults
from pipeline.input.rows import PARAM_COLUMNS
from pipeline.input.table import TableError, load_table
from tests.helpers import rows_of


def validate(path):
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result


def parquet(path, columns):
    pq.write_table(pa.table(columns), path)
    return path


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROW_LEVEL = {  # name -> (writer, expected fragment in the message)
    "wrong_types.parquet": (
        lambda p: parquet(p, {"prompt": [1, 2], "seed": ["x", "1"], "enable_safety_checker": ["maybe", "yes"]}),
        "must be text",
    ),
    "nan_inf.parquet": (lambda p: parquet(p, {"prompt": ["a", "b"], "guidance_scale": [math.inf, 1.0]}), "not finite"),
    "huge_numbers.jsonl": (lambda p: jsonl(p, [{"prompt": "a", "num_inference_steps": 10**12}]), "between 1 and"),
    "negative.jsonl": (lambda p: jsonl(p, [{"prompt": "a", "width": -64, "guidance_scale": -1}]), "out of range"),
    "seed_beyond_64_bits.jsonl": (lambda p: jsonl(p, [{"prompt": "a", "seed": 2**70}]), "out of range"),
    "seed_text.csv": (lambda p: p.write_text("prompt,seed\na,99999999999999999999999\n"), "out of range"),
    "empty_prompt.csv": (lambda p: p.write_text('prompt,seed\n"",1\n" ",2\n'), "needs a prompt"),
    "huge_prompt.csv": (lambda p: p.write_text("prompt\n" + "x" * 100_000 + "\n"), "the limit is 20000"),
    "control_chars.jsonl": (lambda p: jsonl(p, [{"prompt": "bell\x07 and nul\x00"}]), "control character U+0007"),
    "nested.jsonl": (lambda p: jsonl(p, [{"prompt": {"text": "a"}}, {"prompt": ["a"]}]), "must be text"),
    "path_ids.csv": (lambda p: p.write_text("id,prompt\n../../etc/passwd,a\n/abs,b\nok,c\nOK,d\n"), "safe file name"),
    "bool_as_number.jsonl": (lambda p: jsonl(p, [{"prompt": "a", "seed": True}]), "true/false"),
}
FILE_LEVEL = {
    "empty.csv": (lambda p: p.write_bytes(b""), "file is empty"),
    "header_only.csv": (lambda p: p.write_text("prompt,seed\n"), "no rows"),
    "no_prompt.parquet": (lambda p: parquet(p, {"text": ["a"]}), "no 'prompt' column"),
    "mixed_encoding.csv": (lambda p: p.write_bytes("prompt\ncafé\n".encode() + "naïve\n".encode("latin-1")), "UTF-8"),
    "truncated.parquet": (lambda p: p.write_bytes(_parquet_bytes()[:-20]), "cannot read as parquet"),
    "binary.csv": (lambda p: p.write_bytes(os.urandom(2048)), "UTF-8"),
    "binary.parquet": (lambda p: p.write_bytes(os.urandom(2048)), "cannot read as parquet"),
    "ragged.csv": (lambda p: p.write_text("prompt\na\nb,c,d\n"), "cannot read as csv"),
    "broken.jsonl": (lambda p: p.write_text('{"prompt": "a"}\n{"prompt": \n'), "line 2 is not valid JSON"),
    "folder.csv": (lambda p: p.mkdir(), "is a folder"),
    "table.xlsx": (lambda p: p.write_bytes(b"PK"), "unknown table type"),
}


def _parquet_bytes() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"prompt": ["a"] * 100}), sink)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("name", ROW_LEVEL)
def test_bad_rows_are_reported_with_file_row_and_column(tmp_path, name):
    make, fragment = ROW_LEVEL[name]
    path = tmp_path / name
    make(path)
    result = validate(path)
    assert result.exit_code == 3, result.output
    assert fragment in result.output and f"{path}: row " in result.output and "column '" in result.output


@pytest.mark.parametrize("name", FILE_LEVEL)
def test_unusable_files_are_usage_errors(tmp_path, name):
    make, fragment = FILE_LEVEL[name]
    path = tmp_path / name
    make(path)
    result = validate(path)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and str(path) in result.output


def test_generate_records_every_hostile_row_and_runs_the_good_one(tmp_path, tiny_config_file):
    rows = [{"id": "good", "prompt": "a fine sprite"}, {"id": "../x", "prompt": "a"}, {"prompt": "\x00"},
            {"prompt": "b", "seed": -5}, {"prompt": "c", "width": 65}, {"prompt": "x" * 30_000},
            {"prompt": "d", "guidance_scale": "NaN"}, {"id": "good", "prompt": "duplicate id"}]  # fmt: skip
    table = jsonl(tmp_path / "t.jsonl", rows)
    args = ["generate", str(table), "--out", str(tmp_path / "out"), "--config", str(tiny_config_file)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    records = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok"] + ["invalid"] * 7
    assert all(f"row {i + 1}, column" in r["error"] for i, r in enumerate(records[1:], 1))
    assert sorted(os.listdir(tmp_path / "out" / "images" / "00000")) == ["good.png"]
    import pyarrow.parquet as pq_

    assert pq_.read_table(tmp_path / "out" / "manifest.parquet").num_rows == len(rows)


cell = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["64", "128", "1024", "7", "true", "no", " ", "1e3", "0x10", "-0", "64.0"]),
)
table_rows = st.lists(
    st.dictionaries(st.sampled_from(["id", *PARAM_COLUMNS, "note"]), cell, min_size=1), min_size=1, max_size=8
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=table_rows, as_csv=st.booleans())
def test_any_table_splits_into_valid_rows_and_precisely_reported_invalid_ones(tmp_path, rows, as_csv):
    for row in rows:
        row.setdefault("prompt", "p")
    path = tmp_path / ("t.csv" if as_csv else "t.jsonl")
    if as_csv:
        import csv

        import pandas as pd

        frame = pd.DataFrame([{k: "" if v is None else str(v) for k, v in r.items()} for r in rows])
        frame.to_csv(path, index=False, quoting=csv.QUOTE_ALL)  # a bare \r is a line break unless quoted
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        table = load_table(path, Defaults())
    except TableError as exc:
        assert str(path) in str(exc)
        return
    assert sorted(r.number for r in [*rows_of(table), *table.invalid]) == list(range(1, len(rows) + 1))
    for row in rows_of(table):
        assert row.width % 64 == 0 and row.height % 64 == 0 and 64 <= row.width <= 4096
        assert 1 <= row.num_inference_steps <= 1000 and 0 <= row.seed <= MAX_SEED
        assert math.isfinite(row.guidance_scale) and isinstance(row.enable_safety_checker, bool)
        assert row.prompt.strip()
    for bad in table.invalid:
        assert bad.errors and all(e.startswith(f"{path}: row {bad.number}, column '") for e in bad.errors)
    keys = [r.key.casefold() for r in [*rows_of(table), *table.invalid]]
    assert len(keys) == len(set(keys))  # every row gets its own manifest record
