"""The `generate` command end to end on the tiny model: files, manifest, resume, exit codes."""

import hashlib
import json
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.input.config import as_dict
from tests.conftest import REPO

VOLATILE = {"generation_seconds", "write_seconds", "finished_at", "environment", "rank", "model"}
TABLE = [
    {"id": "bottle", "prompt": "a glass bottle, high quality", "seed": 12345, "width": None, "category": "props"},
    {"id": "wide", "prompt": "a wide banner", "seed": None, "width": 128, "category": "ui"},
    {"id": "apple", "prompt": 'an apple, "red", crisp', "seed": 7, "width": None, "category": "food"},
    {"id": "fox", "prompt": "a fox\nsitting", "seed": None, "width": None, "category": "characters"},
    {"id": "more", "prompt": "more steps", "seed": 3, "width": None, "category": "props", "steps": 3},
]


def write_tables(folder):
    columns = {
        "id": [r["id"] for r in TABLE],
        "prompt": [r["prompt"] for r in TABLE],
        "seed": pa.array([r["seed"] for r in TABLE], pa.int64()),
        "width": pa.array([r["width"] for r in TABLE], pa.int64()),
        "num_inference_steps": pa.array([r.get("steps") for r in TABLE], pa.int64()),
        "category": [r["category"] for r in TABLE],
    }
    table = pa.table(columns)
    pq.write_table(table, folder / "t.parquet")
    table.to_pandas().astype(object).to_csv(folder / "t.csv", index=False)
    # pandas writes missing ints as empty cells, floats as '128.0': both are accepted
    return folder / "t.csv", folder / "t.parquet"


def run(*args, config=None):
    extra = ["--config", str(config)] if config else []
    return CliRunner().invoke(cli, [*map(str, args), *extra], catch_exceptions=False)


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def stable(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def snapshot(out):
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in (out / "images").rglob("*.png")}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_config_file):
    """One run that tests only read; a test that reruns into it or changes it takes `own_run` instead."""
    folder = tmp_path_factory.mktemp("run")
    csv, parquet = write_tables(folder)
    result = run("generate", csv, "--out", folder / "out", config=tiny_config_file)
    return folder, result


@pytest.fixture
def own_run(first_run, tmp_path):
    """This test's own copy of the first run: tables and output folder, file times kept."""
    folder, result = first_run
    shutil.copytree(folder, tmp_path / "run")
    return tmp_path / "run", result


def test_first_run_writes_rgba_pngs_and_a_complete_manifest(first_run):
    folder, result = first_run
    assert result.exit_code == 0, result.output
    out = folder / "out"
    records = manifest(out)
    assert [r["id"] for r in records] == [r["id"] for r in TABLE]
    assert all(r["status"] == "ok" and r["error"] is None for r in records)
    for record in records:
        png = out / record["image"]["url"]
        data = png.read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert record["image"] == {
            "url": f"images/00000/{record['id']}.png",
            "content_type": "image/png",
            "file_name": f"{record['id']}.png",
            "file_size": len(data),
            "width": record["width"],
            "height": record["height"],
        }
        with Image.open(png) as image:
            assert image.mode == "RGBA" and image.size == (record["width"], record["height"])
            alpha = image.getchannel("A")
            assert alpha.getextrema()[0] < alpha.getextrema()[1]
            assert image.text["prompt"] == record["prompt"]
            assert f"Seed: {record['seed']}," in image.text["parameters"]
            assert image.text["parameters"].startswith(record["prompt"] + "\nNegative prompt: text, watermark\n")
    parquet_records = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [r["sha256"] for r in parquet_records] == [r["sha256"] for r in records]


def test_per_row_overrides_defaults_and_passthrough(first_run):
    folder, _ = first_run
    by_id = {r["id"]: r for r in manifest(folder / "out")}
    assert (by_id["wide"]["width"], by_id["wide"]["height"]) == (128, 64)
    assert by_id["more"]["num_inference_steps"] == 3 and by_id["bottle"]["num_inference_steps"] == 2
    assert by_id["bottle"]["seed"] == 12345 and by_id["fox"]["seed"] not in (None, 0)
    assert by_id["apple"]["category"] == "food"
    record = by_id["bottle"]
    assert record["guidance_scale"] == 8.0 and record["negative_prompt"] == "text, watermark"
    assert record["enable_safety_checker"] is False and record["has_nsfw_concepts"] is None
    assert record["environment"]["torch"] and record["environment"]["batch_size"] == 2
    assert record["model"]["injection"] == "attn" and record["batch_size"] >= 1


def test_csv_and_parquet_give_the_same_manifest_and_pixels(first_run, tiny_config_file, tmp_path):
    folder, _ = first_run
    result = run("generate", folder / "t.parquet", "--out", tmp_path / "out-parquet", config=tiny_config_file)
    assert result.exit_code == 0, result.output
    assert stable(manifest(tmp_path / "out-parquet")) == stable(manifest(folder / "out"))


def test_rerun_skips_everything_without_loading_the_model(own_run, tiny_config_file):
    folder, _ = own_run
    before = snapshot(folder / "out")
    result = run("generate", folder / "t.csv", "--out", folder / "out", "--log-format", "json",
                 config=tiny_config_file)  # fmt: skip
    assert result.exit_code == 0
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert "model_loaded" not in {e["event"] for e in events}
    summary = next(e for e in events if e["event"] == "summary")
    assert (summary["ok"], summary["skipped"]) == (0, len(TABLE))
    assert snapshot(folder / "out") == before


def test_a_rerun_opens_no_image_and_writes_only_its_statistics(own_run, tiny_config_file):
    folder, _ = own_run
    out = folder / "out"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    opened = []
    watched = str(out / "images")
    sys.addaudithook(
        lambda event, args: opened.append(args[0]) if event == "open" and watched in str(args[0]) else None
    )
    result = run("generate", folder / "t.csv", "--out", out, config=tiny_config_file)
    assert result.exit_code == 0, result.output
    assert opened == [], opened  # done is decided from the manifest and one listing per folder
    changed = {p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file() and
               before.get(p) != p.stat().st_mtime_ns}  # fmt: skip
    assert changed == {"stats", "run.json", ".lock"}


def test_deleted_png_is_redone_alone_and_byte_identical(own_run, tiny_config_file):
    folder, _ = own_run
    out = folder / "out"
    before = snapshot(out)
    (out / "images" / "00000" / "apple.png").unlink()
    result = run("generate", folder / "t.csv", "--out", out, config=tiny_config_file)
    assert result.exit_code == 0, result.output
    after = snapshot(out)
    assert after["apple.png"][2] == before["apple.png"][2]
    assert {k: v for k, v in after.items() if k != "apple.png"} == {k: v for k, v in before.items() if k != "apple.png"}


def test_overwrite_redoes_everything_with_identical_bytes(own_run, tiny_config_file):
    folder, _ = own_run
    before = snapshot(folder / "out")
    result = run("generate", folder / "t.csv", "--out", folder / "out", "--overwrite", config=tiny_config_file)
    assert result.exit_code == 0
    after = snapshot(folder / "out")
    assert all(after[k][2] == before[k][2] and after[k][1] != before[k][1] for k in before)


def test_changed_prompt_is_regenerated(own_run, tiny_config_file, tmp_path):
    folder, _ = own_run
    text = (folder / "t.csv").read_text().replace("an apple", "a pear")
    (tmp_path / "t.csv").write_text(text)
    result = run("generate", tmp_path / "t.csv", "--out", folder / "out", "--log-format", "json",
                 config=tiny_config_file)  # fmt: skip
    summary = next(json.loads(x) for x in result.stderr.splitlines() if '"summary"' in x)
    assert (summary["ok"], summary["skipped"]) == (1, len(TABLE) - 1)
    assert next(r for r in manifest(folder / "out") if r["id"] == "apple")["prompt"].startswith("a pear")


def test_invalid_rows_are_recorded_and_the_rest_run(tmp_path, tiny_config_file):
    table = tmp_path / "t.csv"
    table.write_text("id,prompt,seed,width\ngood,a cat,1,\nbad-seed,a dog,abc,\n../evil,x,,\nbad-width,y,,100\n")
    result = run("generate", table, "--out", tmp_path / "out", config=tiny_config_file)
    assert result.exit_code == 3
    records = manifest(tmp_path / "out")
    assert [(r["id"], r["status"]) for r in records] == [
        ("good", "ok"), ("bad-seed", "invalid"), ("row-000003", "invalid"), ("bad-width", "invalid"),
    ]  # fmt: skip
    assert f"{table}: row 2, column 'seed': value 'abc' is not a number" in records[1]["error"]
    assert "not a safe file name" in records[2]["error"] and "multiple of 64" in records[3]["error"]
    assert sorted(p.name for p in (tmp_path / "out" / "images").rglob("*.png")) == ["good.png"]
    assert "invalid=3" in result.stderr
    manifest_bytes = (tmp_path / "out" / "manifest.parquet").read_bytes()
    rerun = run("generate", table, "--out", tmp_path / "out", config=tiny_config_file)
    assert rerun.exit_code == 3  # nothing to do: the manifest stays as it was
    assert (tmp_path / "out" / "manifest.parquet").read_bytes() == manifest_bytes


def test_strict_refuses_the_table_before_loading_a_model(tmp_path, tiny_config_file):
    table = tmp_path / "t.csv"
    table.write_text("prompt,seed\na,1\nb,-5\n")
    result = run("generate", table, "--out", tmp_path / "out", "--strict", config=tiny_config_file)
    assert result.exit_code == 2
    assert "row 2, column 'seed'" in result.stderr and "--strict" in result.stderr
    assert not (tmp_path / "out" / "images").exists() or not any((tmp_path / "out" / "images").iterdir())


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--batch-size", "0"], 2, "batch-size"),
        (["--shard", "3/2"], 2, "0 <= I < N"),
        (["--width", "100"], 2, "multiple of 64"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path, tiny_config_file, args, code, fragment):
    (tmp_path / "t.csv").write_text("prompt\na\n")
    result = run("generate", tmp_path / "t.csv", "--out", tmp_path / "out", *args, config=tiny_config_file)
    assert result.exit_code == code and fragment in result.output


def test_table_without_prompt_column_and_missing_model_exit_codes(tmp_path):
    (tmp_path / "t.csv").write_text("text\na\n")
    result = run("generate", tmp_path / "t.csv", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "no 'prompt' column" in result.stderr
    (tmp_path / "ok.csv").write_text("prompt\na\n")
    result = run("generate", tmp_path / "ok.csv", "--out", tmp_path / "out", "--model", str(tmp_path / "nope"))
    assert (
        result.exit_code == 4 and "model files are missing" in result.stderr and str(tmp_path / "nope") in result.stderr
    )


def test_validate_and_status(first_run, tmp_path):
    folder, _ = first_run
    good = run("validate", folder / "t.csv")
    assert good.exit_code == 0 and "5 rows, 5 valid, 0 invalid" in good.output
    (tmp_path / "bad.csv").write_text("prompt,width\na,\nb,65\n")
    bad = run("validate", tmp_path / "bad.csv", "--json")
    report = json.loads(bad.output)
    assert bad.exit_code == 3 and report["invalid"] == 1 and "row 2, column 'width'" in report["problems"][0]
    status = run("status", folder / "out", "--json")
    assert status.exit_code == 0
    assert json.loads(status.output) == {"total": 5, "done": 5, "failed": 0, "invalid": 0, "pending": 0}


def test_status_counts_a_deleted_png_as_pending(tmp_path, tiny_config_file):
    (tmp_path / "t.csv").write_text("prompt\na\nb\n")
    assert run("generate", tmp_path / "t.csv", "--out", tmp_path / "out", config=tiny_config_file).exit_code == 0
    (tmp_path / "out" / "images" / "00000" / "row-000002.png").write_bytes(b"truncated")
    status = run("status", tmp_path / "out")
    assert status.exit_code == 3 and "done=1" in status.output and "pending=1" in status.output


@pytest.mark.parametrize("command", ["generate", "validate", "status", "build-tiny"])
def test_help_is_complete_with_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "Example" in result.output and "layerdiffuse " in result.output


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "generate" in result.stdout and "validate" in result.stdout


def test_temporary_files_of_a_killed_run_are_removed(tmp_path, tiny_config_file):
    (tmp_path / "t.csv").write_text("prompt\na\n")
    images = tmp_path / "out" / "images"
    images.mkdir(parents=True)
    import os
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    host = socket.gethostname().replace(".", "_")
    leftover = images / f".row-000001.png.{host}@{dead.pid}.abc123.tmp"
    leftover.write_bytes(b"half a png")
    live = images / f".other.png.{host}@{os.getpid()}.def456.tmp"  # a writer still at work: kept
    live.write_bytes(b"in flight")
    far = images / ".far.png.otherhost@1.ghi789.tmp"
    far.write_bytes(b"from another machine, recent: kept")
    elsewhere = [tmp_path / "out" / "sprites" / "64" / "00000", tmp_path / "out" / "stats"]  # killed sprite writes too
    for folder in elsewhere:
        folder.mkdir(parents=True)
        (folder / leftover.name).write_bytes(b"half a file")
    assert run("generate", tmp_path / "t.csv", "--out", tmp_path / "out", config=tiny_config_file).exit_code == 0
    assert sorted(p.name for p in images.iterdir()) == sorted([live.name, far.name, "00000"])
    assert [p.name for p in (images / "00000").iterdir()] == ["row-000001.png"]
    assert not [p for folder in elsewhere for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_rerun_with_nothing_to_do_imports_no_torch(own_run, tiny_config, tmp_path):
    """The decision needs only the table, the folder's records and the weights' hashes: no model library."""
    folder, _ = own_run
    config = tmp_path / "c.yaml"  # the tiny model where it is, without `build_tiny_if_missing` (which needs torch)
    config.write_text(yaml.safe_dump(as_dict(tiny_config)))
    libraries = "('torch', 'diffusers', 'transformers')"
    probe = ("import sys\nfrom pipeline.cli import cli\ntry:\n    cli(sys.argv[1:])\nexcept SystemExit as exit:\n"
             f"    print(exit.code, sorted(m for m in {libraries} if m in sys.modules))")  # fmt: skip
    args = ["generate", str(folder / "t.csv"), "--out", str(folder / "out"), "--config", str(config)]
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.split(None, 1) == ["0", "[]\n"], result.stderr
