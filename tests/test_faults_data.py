"""Hostile and damaged data: every Arrow type a table holds reaches the manifest, damaged derived files are
rebuilt, and no cell or file ends a command with a traceback."""

import base64
import datetime as dt
import json
import shutil
import uuid
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
    ),
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
    assert (a["pairs"], a["kind"], a["score"], a["span"]) == ([["k", 1]], "p", 1.5, "P1DT0H0M0.000005S")
    logged = [json.loads(line) for log in (out / "parts").glob("*.jsonl") for line in log.read_text().splitlines()]
    assert {json.loads(r["extra"])["stamp"] for r in logged} == {a["stamp"], b["stamp"]}  # the logs' JSON too
    assert run("report", out).exit_code == 0
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


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_config_file):
    """A finished folder (3 rows, one invalid, a passthrough column) to damage copies of."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "t.csv").write_text("id,prompt,width,note\na,a lamp,,x\nb,a cup,100,y\nc,a key,,z\n")
    assert run("generate", folder / "t.csv", "--out", folder / "out", config=tiny_config_file).exit_code == 3
    return folder / "out"


def damaged(finished, tmp_path, damage) -> tuple:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    damage(out)
    return out, finished


def same_manifests(out, reference) -> bool:
    stable = lambda records: [{k: v for k, v in r.items() if k != "finished_at"} for r in records]  # noqa: E731
    return (pq.read_table(out / "manifest.parquet").equals(pq.read_table(reference / "manifest.parquet"))
            and stable(jsonl(out)) == stable(jsonl(reference)))  # fmt: skip


def cut(relative: str, keep):
    def damage(out):
        data = (out / relative).read_bytes()
        (out / relative).write_bytes(data[: keep(data)])

    return damage


BAD_FOOTER = cut("manifest.parquet", lambda data: len(data) - 12)
HALF_LINE = cut("manifest.jsonl", lambda data: len(data) - 40)
LAST_LINE_GONE = cut("manifest.jsonl", lambda data: data.rstrip(b"\n").rfind(b"\n") + 1)


@pytest.mark.parametrize("damage", [BAD_FOOTER, HALF_LINE, LAST_LINE_GONE], ids=["footer", "half-line", "last-line"])
@pytest.mark.parametrize("command", ["merge", "status", "generate", "report"])
def test_damaged_manifest_is_rebuilt(finished, tmp_path, tiny_config_file, damage, command):
    out, reference = damaged(finished, tmp_path, damage)
    args = {"merge": ["merge", out], "status": ["status", out], "report": ["report", out],
            "generate": ["generate", finished.parent / "t.csv", "--out", out, "--verify"]}[command]  # fmt: skip
    result = run(*args, config=tiny_config_file if command == "generate" else None)
    assert result.exit_code == (0 if command in ("merge", "report") else 3), result.output
    if command == "merge":
        assert f"wrote {out}/manifest.parquet" in result.output
    assert same_manifests(out, reference)


def test_export_of_a_damaged_manifest_says_how_to_rebuild_it(finished, tmp_path):
    out, reference = damaged(finished, tmp_path, BAD_FOOTER)
    refused = run("export", out, "--format", "parquet", "--to", tmp_path / "dest")
    assert refused.exit_code == 2 and "manifest.parquet is damaged" in refused.output
    assert f"rebuild it: `layerdiffuse merge {out}`" in refused.output and "Traceback" not in refused.output
    assert run("merge", out).exit_code == 0 and same_manifests(out, reference)
    assert run("export", out, "--format", "parquet", "--to", tmp_path / "dest").exit_code == 0


def keys_of(out):
    table = pq.read_table(out / "parts" / "keys.parquet")
    return table.column("id").to_pylist(), table.schema.metadata


@pytest.mark.parametrize("lost", ["parts/keys.parquet", "parts"])
@pytest.mark.parametrize("command", ["status", "merge"])
def test_lost_keys_or_parts_are_rebuilt_from_the_manifest(finished, tmp_path, lost, command):
    out, reference = damaged(finished, tmp_path, lambda out: shutil.rmtree(out / lost) if lost == "parts" else
                             (out / lost).unlink())  # fmt: skip
    result = run(command, out)
    assert result.exit_code == (3 if command == "status" else 0), result.output
    if command == "status":
        assert "total=3 done=2 failed=0 invalid=1 pending=0" in result.output
    assert keys_of(out) == keys_of(reference) and same_manifests(out, reference)


def test_lost_parts_redo_nothing(finished, tmp_path, tiny_config_file):
    out, reference = damaged(finished, tmp_path, lambda out: shutil.rmtree(out / "parts"))
    rerun = run("generate", finished.parent / "t.csv", "--out", out, "--log-format", "json", config=tiny_config_file)
    assert rerun.exit_code == 3 and json.loads(rerun.stderr.splitlines()[-2])["skipped"] == 2
    assert same_manifests(out, reference)


def bad_checkpoint_metadata(out):
    table = pq.read_table(out / "parts" / "checkpoint.parquet")
    metadata = {**table.schema.metadata, b"layerdiffuse.contexts": b"[{not json"}
    pq.write_table(table.replace_schema_metadata(metadata), out / "parts" / "checkpoint.parquet")


def test_checkpoint_with_damaged_metadata_is_set_aside_and_rewritten(finished, tmp_path, tiny_config_file):
    out, reference = damaged(finished, tmp_path, bad_checkpoint_metadata)
    status = run("status", out)
    assert status.exit_code == 3 and "total=3 done=2 failed=0 invalid=1 pending=0" in status.output
    merged = run("merge", out)
    assert merged.exit_code == 0 and "wrote" in merged.output and same_manifests(out, reference)
    checkpoint = pq.read_table(out / "parts" / "checkpoint.parquet")
    assert json.loads(checkpoint.schema.metadata[b"layerdiffuse.contexts"])  # whole again
    bad_checkpoint_metadata(out)
    rerun = run("generate", finished.parent / "t.csv", "--out", out, "--log-format", "json", config=tiny_config_file)
    assert rerun.exit_code == 3 and json.loads(rerun.stderr.splitlines()[-2])["skipped"] == 2  # nothing redone


def test_keys_with_a_bad_footer_are_rebuilt(finished, tmp_path):
    out, reference = damaged(finished, tmp_path, cut("parts/keys.parquet", lambda data: len(data) - 9))
    assert run("status", out).exit_code == 3 and keys_of(out) == keys_of(reference)


def test_lost_keys_and_manifests_are_rebuilt_from_records_of_every_row(finished, tmp_path):
    def lose(out):
        for name in ("parts/keys.parquet", "manifest.parquet", "manifest.jsonl"):
            (out / name).unlink()

    out, reference = damaged(finished, tmp_path, lose)
    merged = run("merge", out)
    assert merged.exit_code == 0, merged.output
    assert keys_of(out)[0] == keys_of(reference)[0] and jsonl(out)[1]["note"] == "y"


def test_folder_without_keys_or_records_says_how_to_restore_it(finished, tmp_path):
    def lose(out):
        shutil.rmtree(out / "parts")
        (out / "manifest.parquet").unlink()

    out, _ = damaged(finished, tmp_path, lose)
    for command in ("status", "merge", "report"):
        result = run(command, out)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"{out}/parts/keys.parquet is missing or damaged" in result.output
        assert f"run `layerdiffuse generate TABLE --out {out}` again" in result.output


@pytest.fixture(scope="module")
def s3_server():
    """A real S3 API (moto's server on 127.0.0.1) reached through s3fs."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}  # fmt: skip
    server.stop()


@pytest.fixture
def s3_folder(s3_server, monkeypatch):
    import s3fs

    from pipeline.common.storage import Storage

    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return Storage(f"s3://{bucket}/run")


def test_damaged_derived_files_on_an_object_store_are_rebuilt(s3_folder):
    from pipeline.folder.layout import CHECKPOINT, KEYS
    from pipeline.folder.manifest import folder_state, merge, read_keys, write_keys
    from pipeline.folder.parts import PartWriter

    storage, when = s3_folder, dt.datetime(2024, 5, 6, 7, 8, 9, 123000)
    with PartWriter(storage, "20260101T000000000000Z-rank00000-of-00001") as part:
        for i, key in enumerate("abc"):
            part.append({"id": key, "row": i + 1, "status": "failed", "error": "boom", "taken": when, "blob": b"\x00"})
    passthrough = pa.schema([("taken", pa.timestamp("ms")), ("blob", pa.binary())])
    write_keys(storage, ["c", "a", "b"], passthrough)
    assert merge(storage).rewritten
    whole = {name: storage.read_bytes(name) for name in ("manifest.parquet", "manifest.jsonl", KEYS)}
    assert pq.read_table(storage.fs.open(storage.path("manifest.parquet"))).column("taken").to_pylist() == [when] * 3
    for name, data in whole.items():  # each damaged alone: rebuilt alike
        storage.write(name, data[: len(data) - 30])
        if name == KEYS:
            assert read_keys(storage)[0].to_pylist() == ["c", "a", "b"] and read_keys(storage)[1] == passthrough
        else:
            assert merge(storage).rewritten
        assert storage.read_bytes(name) == whole[name] and not merge(storage).rewritten
    table = pq.read_table(storage.fs.open(storage.path(CHECKPOINT)))
    storage.write(CHECKPOINT, b"PAR1" + b"\0" * 64 + b"PAR1")
    assert sorted(folder_state(storage, ["id"]).column("id").to_pylist()) == ["a", "b", "c"]
    assert merge(storage).rewritten and pq.read_table(storage.fs.open(storage.path(CHECKPOINT))).equals(table)
