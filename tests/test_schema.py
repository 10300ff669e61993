"""The manifest has one explicit schema: manifests of different runs read together, seeds up to 2^64-1."""

import json

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.folder.schema import SCHEMA, VERSION, json_line

MAX_SEED = 2**64 - 1


def generate(table, out, config, *extra):
    args = ["generate", str(table), "--out", str(out), "--config", str(config), "--log-format", "json", *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_two_different_runs_read_together_with_pyarrow_dataset_and_polars(tmp_path, tiny_config_file):
    (tmp_path / "a.csv").write_text(f"id,prompt,seed,category\nbig,a lamp,{MAX_SEED},props\nsmall,a cup,3,food\n")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"id": "fine", "prompt": "a key", "note": 7}) + "\n"
        + json.dumps({"id": "bad", "prompt": "a door", "width": 100, "note": [1, "x"]}) + "\n"
    )  # fmt: skip
    assert generate(tmp_path / "a.csv", tmp_path / "a", tiny_config_file).exit_code == 0
    assert generate(tmp_path / "b.jsonl", tmp_path / "b", tiny_config_file).exit_code == 3
    files = [str(tmp_path / name / "manifest.parquet") for name in "ab"]
    for path in files:
        schema = pq.read_schema(path)
        assert schema.metadata[b"layerdiffuse.manifest_version"] == VERSION.encode()
        assert [schema.field(n).type for n in SCHEMA.names] == SCHEMA.types  # typed even where all null
    unified = pa.unify_schemas([pq.read_schema(p) for p in files])
    table = ds.dataset(files, schema=unified).to_table().sort_by("id")
    assert table.column("id").to_pylist() == ["bad", "big", "fine", "small"]
    assert table.column("seed").type == pa.uint64() and MAX_SEED in table.column("seed").to_pylist()
    assert table.column("finished_at").type == pa.timestamp("ms", tz="UTC")
    assert table.column("note").to_pylist() == ['[1, "x"]', None, "7", None]  # passthrough as text
    assert table.column("category").to_pylist() == [None, "props", None, "food"]
    # Polars reads the files as one: the fixed columns agree, passthrough columns differ per table.
    frame = pl.scan_parquet(files, missing_columns="insert", extra_columns="ignore").collect().sort("id")
    assert frame["status"].to_list() == ["invalid", "ok", "ok", "ok"]
    assert frame["seed"].dtype == pl.UInt64 and frame["seed"].max() == MAX_SEED
    invalid = frame.filter(pl.col("id") == "bad")
    assert "multiple of 64" in invalid["error"][0] and invalid["image"][0] is None


def test_largest_seed_survives_manifest_rerun_and_merge(tmp_path, tiny_config_file):
    (tmp_path / "t.csv").write_text(f"id,prompt,seed\nx,a lamp,{MAX_SEED}\n")
    assert generate(tmp_path / "t.csv", tmp_path / "out", tiny_config_file).exit_code == 0
    rerun = generate(tmp_path / "t.csv", tmp_path / "out", tiny_config_file)
    summary = json.loads(rerun.stderr.splitlines()[-2])
    assert rerun.exit_code == 0 and (summary["skipped"], summary["ok"]) == (1, 0)
    merged = CliRunner().invoke(cli, ["merge", str(tmp_path / "out")])
    assert merged.exit_code == 0, merged.output
    assert pq.read_table(tmp_path / "out" / "manifest.parquet").column("seed").to_pylist() == [MAX_SEED]
    line = json.loads((tmp_path / "out" / "manifest.jsonl").read_text())
    assert line["seed"] == MAX_SEED


def test_manifest_lines_keep_unicode_and_exact_cells(tmp_path, tiny_config_file):
    rows = [{"id": "huge", "prompt": "a lamp", "seed": 2**70, "note": "ünïcode"}, {"id": "fine", "prompt": "a cup"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert generate(tmp_path / "t.jsonl", tmp_path / "out", tiny_config_file).exit_code == 3
    lines = (tmp_path / "out" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    records = {r["id"]: r for r in map(json.loads, lines)}
    assert records["huge"]["status"] == "invalid" and records["huge"]["input"]["seed"] == str(2**70)
    assert records["huge"]["note"] == "ünïcode" and records["fine"]["status"] == "ok"
    assert records["fine"]["finished_at"].endswith("Z") and len(records["fine"]["finished_at"]) == 24
    # Beyond what a table cell can hold, a line still says any integer exactly.
    record = {"id": "x", "seed": MAX_SEED, "input": {"seed": 2**70}, "error": None}
    assert json.loads(json_line(record)) == record
