"""A run killed at any named moment leaves a folder that the next run completes byte-identically; the first
Ctrl-C says at once what will happen."""

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image

from pipeline.common.faults import ENV, MOMENTS
from pipeline.common.storage import Storage
from tests.conftest import REPO
from tests.helpers import latest_records

VOLATILE = {"generation_seconds", "write_seconds", "finished_at", "environment", "rank"}
ROWS = 6
# Moments reached once per image or batch: kill at a later visit, mid-run.
REPEATED = {"png_temp_written": 3, "png_in_place": 3, "record_appended": 4, "batch_generated": 2, "batch_recorded": 2}


def env(**extra):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def command(table, out, config, *extra):
    return [sys.executable, "-m", "pipeline", "generate", str(table), "--out", str(out), "--config", str(config),
            "--log-format", "json", *extra]  # fmt: skip


def hashes(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "images").rglob("*.png"))}


def manifest(out):
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in VOLATILE} for x in lines]


def assert_consistent(out):
    """What any instant must look like: every PNG whole, every ok record matching its file."""
    for png in (out / "images").rglob("*.png"):
        with Image.open(png) as image:
            image.load()
    for record in latest_records(Storage(out)).values():
        if record["status"] == "ok":
            data = (out / record["image"]["url"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == record["sha256"], record["id"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_config_file):
    """An uninterrupted run: read only (tests compare against it, none writes to it)."""
    folder = tmp_path_factory.mktemp("reference")
    table = folder / "t.csv"
    table.write_text("id,prompt,seed\n" + "".join(f"r{i},sprite {i},{i}\n" for i in range(ROWS - 1)) + "bad,x,-1\n")
    result = subprocess.run(command(table, folder / "out", tiny_config_file), cwd=REPO, env=env(), capture_output=True)
    assert result.returncode == 3, result.stderr  # the invalid row
    return table, folder / "out"


@pytest.mark.parametrize("moment", MOMENTS)
def test_sigkill_at_a_named_moment_then_rerun_is_complete_and_byte_identical(moment, reference, tiny_config_file,
                                                                             tmp_path):  # fmt: skip
    table, ref = reference
    out = tmp_path / "out"
    fault = f"{moment}:{REPEATED.get(moment, 1)}"
    killed = subprocess.run(command(table, out, tiny_config_file), cwd=REPO, env=env(**{ENV: fault}),
                            capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, f"{fault} was never reached: {killed.stderr[-2000:]}"
    assert_consistent(out)
    rerun = subprocess.run(command(table, out, tiny_config_file), cwd=REPO, env=env(), capture_output=True, text=True)
    assert rerun.returncode == 3, rerun.stderr
    assert hashes(out) == hashes(ref) and len(hashes(ref)) == ROWS - 1
    assert manifest(out) == manifest(ref)
    assert not list((out / "images").rglob(".*")), "temporary files left behind"


def test_first_ctrl_c_says_at_once_what_happens_and_the_run_stops_after_its_batch(reference, tiny_config_file,
                                                                                  tmp_path):  # fmt: skip
    table, ref = reference
    slow = ["--num-inference-steps", "40", "--batch-size", "2"]  # batches long enough to signal inside one
    process = subprocess.Popen(command(table, tmp_path / "out", tiny_config_file, *slow), cwd=REPO, env=env(),
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    events = iter(json.loads(line) for line in process.stderr)
    assert next(e for e in events if e["event"] == "batch_done")  # the second batch starts now
    process.send_signal(signal.SIGINT)
    following = next(events)
    assert following["event"] == "stopping", following  # before the batch under way finishes
    assert "Ctrl-C again" in following["message"] and "current batch" in following["message"]
    rest = [e["event"] for e in events]
    assert process.wait(timeout=300) == 130
    finished = 1 + rest.count("batch_done")  # the batch under way when the signal came is finished too
    assert finished <= 2 and rest[-2:] == ["interrupted", "summary"]
    assert len(latest_records(Storage(tmp_path / "out"))) == 1 + 2 * finished  # the invalid row, two rows a batch
