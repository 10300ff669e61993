"""Hostile and damaged data: every Arrow type a table holds reaches the manifest, damaged derived files are
rebuilt, and no cell or file ends a command with a traceback."""

import base64
import datetime as dt
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli

EVERY_TYPE = {  # a passthrough column of each kind of Arrow type a user's table can hold
    "taken": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 123456), None], pa.timestamp("us")),
    "stamp": pa.array([1_704_164_645_123_456_789, 0], pa.timestamp("ns", tz="UTC")),
    "day": pa.array([dt.date(2024, 1, 2), dt.date(1999, 12, 31)], pa.date32()),
    "clock": pa.array([dt.time(1, 2, 3, 4), None], pa.time64("us")),
    "span": pa.array([dt.timedelta(days=1, microseconds=5), dt.timedelta(seconds=-3)], pa.duration("us")),
    "price": pa.array([Decimal("12.345"), Decimal("-0.001")], pa.decimal128(10, 3)),
    "blob": pa.array([b"\x00\xffPNG", None], pa.binary()),
    "tags": pa.array([["x", "y"], []], pa.list_(pa.string())),
    "meta": pa.array(
        [{"when": dt.datetime(2020, 1, 1), "raw": b"\x01"}, None],
        pa.struct([("when", pa.timestamp("ms")), ("raw", pa.binary())]),
    ),  # fmt: skip
    "pairs": pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int32())),
    "kind": pa.array(["p", "q"]).dictionary_encode(),
    "score": pa.array([1.5, None], pa.float32()),
}


def run(*args, config=None):
    extra = ["--config", str(config)] if config else []
    return CliRunner().invoke(cli, [*map(str, args), *extra])


def jsonl(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def test_every_arrow_type_round_trips_into_both_manifests(tmp_path, tiny_config_file):
    table = pa.table({"id": ["a", "b"], "prompt": ["a lamp", "a cup"], **EVERY_TYPE})
    pq.write_table(table, tmp_path / "t.parquet")
    out = tmp_path / "out"
    first = run("generate", tmp_path / "t.parquet", "--out", out, config=tiny_config_file)
    assert first.exit_code == 0, first.output
    manifest = pq.read_table(out / "manifest.parquet")
    for name, column in EVERY_TYPE.items():  # the natural type, cell for cell
        assert manifest.schema.field(name).type == column.type, name
        assert manifest.column(name).to_pylist() == column.to_pylist(), name
    a, b = jsonl(out)
    assert (a["taken"], b["taken"]) == ("2024-01-02T03:04:05.123456", None)
    assert a["stamp"] == "2024-01-02T03:04:05.123456789+00:00" and a["day"] == "2024-01-02"
    assert (a["clock"], a["price"], b["price"]) == ("01:02:03.000004", "12.345", "-0.001")
    assert base64.b64decode(a["blob"]) == b"\x00\xffPNG" and a["tags"] == ["x", "y"]
    assert a["meta"] == {"when": "2020-01-01T00:00:00", "raw": base64.b64encode(b"\x01").decode()}
    assert (a["pairs"], a["kind"], a["score"]) == ([["k", 1]], "p", 1.5)
    rerun = run("generate", tmp_path / "t.parquet", "--out", out, "--log-format", "json", config=tiny_config_file)
    summary = json.loads(rerun.stderr.splitlines()[-2])
    assert rerun.exit_code == 0 and (summary["skipped"], summary["ok"]) == (2, 0)
    for kind in ("webdataset", "imagefolder", "parquet"):  # and every export reads them
        exported = run("export", out, "--format", kind, "--to", tmp_path / kind)
        assert exported.exit_code == 0 and json.loads((tmp_path / kind / "export.json").read_text())["rows"] == 2


def test_invalid_rows_with_odd_cells_are_recorded_not_crashed(tmp_path, tiny_config_file):
    # `seed` holds timestamps: no row can run; its cells and the passthrough ones land in the manifest as text.
    table = pa.table({"prompt": ["a lamp", "a cup"], "seed": EVERY_TYPE["taken"], "blob": EVERY_TYPE["blob"],
                      "meta": EVERY_TYPE["meta"]})  # fmt: skip
    pq.write_table(table, tmp_path / "t.parquet")
    out = tmp_path / "out"
    result = run("generate", tmp_path / "t.parquet", "--out", out, config=tiny_config_file)
    assert result.exit_code == 3, result.output
    a, b = jsonl(out)
    assert a["status"] == "invalid" and "row 1, column 'seed': value datetime.datetime(2024, 1, 2" in a["error"]
    assert "is a datetime; it must be a number" in a["error"]
    assert a["input"]["seed"] == '"2024-01-02T03:04:05.123456"' and a["input"]["blob"] == '"AP9QTkc="'
    assert b["status"] == "ok" and b["blob"] is None  # an empty seed cell takes the derived seed
    manifest = pq.read_table(out / "manifest.parquet")
    assert manifest.column("blob").to_pylist() == [b"\x00\xffPNG", None]
    assert manifest.column("meta").to_pylist() == EVERY_TYPE["meta"].to_pylist()


def test_lone_surrogate_makes_its_row_invalid(tmp_path, tiny_config_file):
    lines = ['{"id": "bad", "prompt": "a lamp \\ud800"}', '{"id": "odd", "prompt": "a cup", "note": ["\\udfff"]}',
             '{"id": "fine", "prompt": "a key \\ud83d\\ude00", "note": "ok"}']  # fmt: skip
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    checked = run("validate", tmp_path / "t.jsonl")
    assert checked.exit_code == 3 and "2 invalid" in checked.output
    assert f"{tmp_path / 't.jsonl'}: row 1, column 'prompt': value 'a lamp \\ud800' contains U+D800" in checked.output
    out = tmp_path / "out"
    result = run("generate", tmp_path / "t.jsonl", "--out", out, config=tiny_config_file)
    assert result.exit_code == 3, result.output
    bad, odd, fine = jsonl(out)
    assert bad["status"] == odd["status"] == "invalid" and "lone surrogate" in bad["error"]
    assert "row 2, column 'note': value ['\\udfff'] contains U+DFFF" in odd["error"]
    assert bad["input"]["prompt"] == "a lamp \ufffd" and odd["note"] == ["\ufffd"]
    assert fine["status"] == "ok" and fine["prompt"] == "a key \U0001f600"
    assert pq.read_table(out / "manifest.parquet").column("note").to_pylist() == [None, '["\ufffd"]', "ok"]
