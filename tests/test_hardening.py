"""Unattended runs: crashes, signals, full disks, concurrent runs and failing batches lose nothing."""

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import Seams, cli
from pipeline.common.storage import Storage
from pipeline.folder.lock import FolderLock, FolderLocked
from tests.conftest import REPO
from tests.helpers import hooked, latest_records

VOLATILE = {"generation_seconds", "write_seconds", "finished_at", "environment", "rank"}
ROWS = 12


def env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def command(table: Path, out: Path, config: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "pipeline", "generate", str(table), "--out", str(out), "--config", str(config),
            "--log-format", "json", *extra]  # fmt: skip


def start(table, out, config, *extra, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(command(table, out, config, *extra), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "images").rglob("*.png"))}


def manifest(out: Path) -> list[dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in VOLATILE} for x in lines]


def wait_for_event(process: subprocess.Popen, name: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    for line in process.stderr:
        event = json.loads(line)
        if event["event"] == name:
            return event
        if time.time() > deadline:
            break
    pytest.fail(f"no {name!r} event (exit code {process.poll()})")


def assert_consistent(out: Path) -> None:
    """What any instant must look like: every PNG whole, every ok record matching its file."""
    for png in (out / "images").rglob("*.png"):
        with Image.open(png) as image:
            image.load()
    for record in latest_records(Storage(out)).values():
        if record["status"] == "ok":
            data = (out / record["image"]["url"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == record["sha256"], record["id"]
    if (out / "manifest.jsonl").exists():
        for record in (json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()):
            if record["status"] == "ok":
                data = (out / record["image"]["url"]).read_bytes()
                assert hashlib.sha256(data).hexdigest() == record["sha256"], record["id"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_config_file):
    folder = tmp_path_factory.mktemp("hardening")
    table = folder / "t.csv"
    table.write_text("id,prompt,seed\n" + "".join(f"r{i:02d},sprite {i},{i}\n" for i in range(ROWS)))
    started = time.perf_counter()
    result = subprocess.run(command(table, folder / "ref", tiny_config_file), cwd=REPO, env=env(), capture_output=True)
    assert result.returncode == 0, result.stderr
    return table, folder / "ref", time.perf_counter() - started


@pytest.mark.slow  # kills at moments chosen by timing: an extra, run by `make test-slow`
def test_sigkill_at_twelve_moments_then_rerun_is_complete_and_byte_identical(reference, tiny_config_file, tmp_path):
    table, ref, duration = reference
    out = tmp_path / "out"
    for i in range(12):
        process = start(table, out, tiny_config_file)
        time.sleep(duration * (0.45 + 0.05 * i))  # spread over model loading and rendering
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert_consistent(out)
    final = subprocess.run(command(table, out, tiny_config_file), cwd=REPO, env=env(), capture_output=True)
    assert final.returncode == 0, final.stderr
    assert hashes(out) == hashes(ref) and len(hashes(ref)) == ROWS
    assert manifest(out) == manifest(ref)
    assert_consistent(out)
    assert not list((out / "images").rglob(".*")), "temporary files left behind"


def test_sigterm_stops_after_the_current_batch(reference, tiny_config_file, tmp_path):
    table, ref, _ = reference
    out = tmp_path / "out"
    process = start(table, out, tiny_config_file)
    wait_for_event(process, "batch_done")
    process.send_signal(signal.SIGTERM)
    summary = wait_for_event(process, "summary")
    assert process.wait(timeout=60) == 130
    assert summary["interrupted"] is True and 0 < summary["ok"] < ROWS
    assert not (out / "manifest.jsonl").exists()
    assert_consistent(out)
    assert len(latest_records(Storage(out))) == summary["ok"]  # every written PNG has its record
    rerun = subprocess.run(command(table, out, tiny_config_file), cwd=REPO, env=env(), capture_output=True)
    assert rerun.returncode == 0 and hashes(out) == hashes(ref)


def test_second_run_on_the_same_folder_is_refused(reference, tiny_config_file, tmp_path):
    table, _, _ = reference
    out = tmp_path / "out"
    first = start(table, out, tiny_config_file, "--num-inference-steps", "60")  # slow enough to overlap
    wait_for_event(first, "plan")
    second = subprocess.run(command(table, out, tiny_config_file), cwd=REPO, env=env(), capture_output=True, text=True)
    assert first.poll() is None, "the first run ended too soon for this test to mean anything"
    assert second.returncode == 5
    error = json.loads(second.stderr.splitlines()[-1])
    assert error["event"] == "error" and f"pid {first.pid} on " in error["message"] and " since 20" in error["message"]
    first.communicate(timeout=120)
    assert first.returncode == 0 and len(hashes(out)) == ROWS


def test_shard_jobs_share_a_folder_but_exclude_full_runs_and_their_twins(tmp_path):
    with FolderLock(tmp_path, (0, 2)), FolderLock(tmp_path, (1, 2)):
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):
            FolderLock(tmp_path)
        with pytest.raises(FolderLocked):
            FolderLock(tmp_path, (1, 2))
    with FolderLock(tmp_path), pytest.raises(FolderLocked):
        FolderLock(tmp_path, (0, 2))
    FolderLock(tmp_path).release()  # released locks never block


def test_full_disk_is_a_clear_error_and_loses_nothing(reference, tiny_config_file, tmp_path):
    table, ref, _ = reference
    out = tmp_path / "out"

    def limit_file_size():  # a real kernel limit: writes past 12 kB fail (EFBIG) like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))

    result = subprocess.run(command(table, out, tiny_config_file), cwd=REPO, env=env(), capture_output=True,
                            text=True, preexec_fn=limit_file_size)  # fmt: skip
    assert result.returncode == 6, result.stderr
    error = json.loads(result.stderr.splitlines()[-1])
    assert "cannot write" in error["message"] and str(out / "images") in error["message"]
    assert "bytes written" in error["message"]
    assert_consistent(out)
    assert not list((out / "images").rglob(".*"))
    rerun = subprocess.run(command(table, out, tiny_config_file), cwd=REPO, env=env(), capture_output=True)
    assert rerun.returncode == 0 and hashes(out) == hashes(ref)


@pytest.fixture
def failing_prompt():
    """Batches holding a row whose prompt contains 'boom' raise, as an out-of-memory error would; the
    generation calls are listed."""
    calls = []

    def before(rows):
        calls.append([r.key for r in rows])
        if any("boom" in r.prompt for r in rows):
            raise RuntimeError("CUDA out of memory (simulated)")

    return calls, Seams(renderers=hooked(before))


def test_failed_batch_is_retried_row_by_row_and_the_run_goes_on(failing_prompt, tiny_config_file, tmp_path):
    calls, seams = failing_prompt
    (tmp_path / "t.csv").write_text("id,prompt\na,fine\nb,boom\nc,also fine\n")
    result = CliRunner().invoke(cli, ["generate", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"),
                                      "--config", str(tiny_config_file)], obj=seams)  # fmt: skip
    assert result.exit_code == 3
    assert calls == [["a", "b"], ["a"], ["b"], ["c"]]
    records = {
        json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    }
    assert [records[k]["status"] for k in "abc"] == ["ok", "failed", "ok"]
    assert records["b"]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert sorted(p.name for p in (tmp_path / "out" / "images").rglob("*.png")) == ["a.png", "c.png"]


def test_max_failures_stops_a_run_that_fails_everywhere(failing_prompt, tiny_config_file, tmp_path):
    (tmp_path / "t.csv").write_text("prompt\nboom 1\nboom 2\nboom 3\nboom 4\nboom 5\n")
    args = ["generate", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"), "--config", str(tiny_config_file)]
    calls, seams = failing_prompt
    result = CliRunner().invoke(cli, [*args, "--max-failures", "1", "--batch-size", "1"], obj=seams)
    assert result.exit_code == 7 and "2 rows failed (--max-failures 1)" in result.stderr
    assert len(calls) == 2
