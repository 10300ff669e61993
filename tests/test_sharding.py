"""Several processes (accelerate launch, --shard) give the same images and manifest as one process."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.plan.sharding import Process, my_share, parse_shard
from tests.conftest import REPO

VOLATILE = {"generation_seconds", "write_seconds", "finished_at", "environment", "rank"}
ROWS = 14


def test_launched_processes_share_the_remaining_work_evenly():
    work = list(range(23))
    pending = lambda x: x % 2 == 1 or x > 15  # noqa: E731  (a resume: some batches are done)
    shares = [my_share(work, Process(rank=r, world_size=4, launched=True), pending) for r in range(4)]
    assert sorted(x for share in shares for x in share) == [x for x in work if pending(x)]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    idle = [my_share([1], Process(rank=r, world_size=3, launched=True), lambda x: True) for r in range(3)]
    assert idle == [[1], [], []]


def test_shards_own_fixed_slices_whatever_is_done():
    work = list(range(10))
    for done in (set(), {0, 3, 6}):
        shares = [my_share(work, Process(rank=r, world_size=3), lambda x, d=done: x not in d) for r in range(3)]
        assert shares[1] == [x for x in (1, 4, 7) if x not in done]
        assert sorted(x for share in shares for x in share) == [x for x in work if x not in done]


def test_parse_shard():
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "a/b", "1", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def env():
    # One intra-op thread per process, as torchrun sets it: CPU sums then add up in the same order.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, table: Path, out: Path, config: Path) -> subprocess.Popen:
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", "pipeline", "generate", str(table), "--out", str(out), "--config", str(config)]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def single(table: Path, out: Path, config: Path, *extra) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline", "generate", str(table), "--out", str(out), "--config", str(config)]
    return subprocess.run([*command, *extra], cwd=REPO, env=env(), capture_output=True, text=True)


def assert_complete(out: Path, output: str) -> None:
    """The launcher turns the merging rank's exit code 3 (one invalid row) into its own 1; `status` tells."""
    status = CliRunner().invoke(cli, ["status", str(out), "--json"])
    assert json.loads(status.output) == {"total": ROWS + 1, "done": ROWS, "failed": 0, "invalid": 1, "pending": 0}
    assert str(REPO / "pipeline") not in output, output  # no traceback from our code (the launcher prints its own)


def hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "images").rglob("*.png"))}


def manifest(out: Path) -> list[dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_config_file):
    folder = tmp_path_factory.mktemp("sharding")
    lines = ["id,prompt,seed"] + [f"s{i:02d},sprite number {i},{i if i % 3 else ''}" for i in range(ROWS)]
    lines.append("bad,broken row,-1")  # an invalid row: recorded once, by one process
    table = folder / "t.csv"
    table.write_text("\n".join(lines) + "\n")
    result = single(table, folder / "one", tiny_config_file)
    assert result.returncode == 3, result.stderr  # 3: the invalid row
    return table, folder / "one"


def test_two_processes_with_accelerate_match_one_process(reference, tiny_config_file, tmp_path):
    table, one = reference
    process = launch(2, table, tmp_path / "two", tiny_config_file)
    output, _ = process.communicate(timeout=300)
    assert_complete(tmp_path / "two", output)
    parts = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "two" / "parts").glob("*.jsonl"))
    assert parts == ["rank00000-of-00002.jsonl", "rank00001-of-00002.jsonl"]
    assert hashes(tmp_path / "two") == hashes(one) and len(hashes(one)) == ROWS
    assert manifest(tmp_path / "two") == manifest(one)
    ranks = [json.loads(x)["rank"] for x in (tmp_path / "two" / "manifest.jsonl").read_text().splitlines()]
    assert set(ranks) == {0, 1, None}  # None: the invalid row has no generating process


def test_killed_process_then_rerun_with_another_count_completes_byte_identical(reference, tiny_config_file, tmp_path):
    table, one = reference
    out = tmp_path / "killed"
    process = launch(2, table, out, tiny_config_file)
    victim = _wait_for_progress_then_pick_worker(process, out)
    victim.send_signal(signal.SIGKILL)
    process.communicate(timeout=120)
    assert process.returncode != 0
    done_before = len(list((out / "images").rglob("*.png")))
    assert 0 < done_before < ROWS, "the kill must land mid-run for this test to mean anything"
    assert not (out / "manifest.jsonl").exists()
    rerun = launch(3, table, out, tiny_config_file)
    output, _ = rerun.communicate(timeout=300)
    assert_complete(out, output)
    assert hashes(out) == hashes(one)
    assert manifest(out) == manifest(one)
    assert not [p for p in (out / "images").rglob("*") if p.is_file() and p.suffix != ".png"], "temporary files left"


def _wait_for_progress_then_pick_worker(process: subprocess.Popen, out: Path) -> psutil.Process:
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(list((out / "images").rglob("*.png"))) >= 2:
            workers = [c for c in psutil.Process(process.pid).children(recursive=True) if "pipeline" in c.cmdline()]
            if workers:
                return workers[-1]
        if process.poll() is not None:
            pytest.fail("the run ended before it could be interrupted")
        time.sleep(0.05)
    pytest.fail("no progress within two minutes")


def test_separate_shards_then_merge_match_one_process(reference, tiny_config_file, tmp_path):
    table, one = reference
    out = tmp_path / "shards"
    for i in range(3):
        result = single(table, out, tiny_config_file, "--shard", f"{i}/3")
        assert result.returncode == 3, result.stderr
    (out / "manifest.jsonl").unlink()
    (out / "manifest.parquet").unlink()
    merged = CliRunner().invoke(cli, ["merge", str(out)])
    assert merged.exit_code == 0, merged.output
    assert hashes(out) == hashes(one)
    assert manifest(out) == manifest(one)


def test_merge_refuses_an_incomplete_folder(reference, tiny_config_file, tmp_path):
    table, _ = reference
    out = tmp_path / "partial"
    assert single(table, out, tiny_config_file, "--shard", "0/2").returncode == 3
    merged = CliRunner().invoke(cli, ["merge", str(out)])
    assert merged.exit_code == 3 and "no outcome yet" in merged.output
    assert not (out / "manifest.jsonl").exists()
