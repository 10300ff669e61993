"""`--executor ray` on real Ray clusters started here: a two-node cluster on loopback (`ray start`), and the
CLI's own cluster of this machine. Outputs match one process byte for byte; a killed worker's shard is
retried; a killed driver's run resumes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.run.executor import generate
from pipeline.run.loop import RunRequest
from tests.conftest import REPO
from tests.test_sharding import free_port, hashes, manifest

ray = pytest.importorskip("ray")

ROWS = 12


def ray_env() -> dict:
    """One intra-op thread, as Ray gives its workers: CPU sums add up in the same order as the reference's."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled",
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ray") / "t.csv"
    rows = [f"r{i:02d},sprite number {i},{i if i % 3 else ''}" for i in range(ROWS)]
    path.write_text("\n".join(["id,prompt,seed", *rows, "bad,broken row,-1"]) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(table, tiny_config, tmp_path_factory) -> Path:
    """One process, one thread."""
    import torch

    out, threads = tmp_path_factory.mktemp("one") / "out", torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generate(tiny_config, table, out)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def cluster():
    """Two nodes on loopback: a head and a second node, one CPU each, each its own session of processes."""
    port = free_port()  # sessions in Ray's own temp folder: a longer path would not fit its socket names
    head = ["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
            "--include-dashboard=false", "--resources={\"head\": 1}"]  # fmt: skip
    node = ["ray", "start", "--block", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--num-gpus=0",
            "--resources={\"second\": 1}"]  # fmt: skip
    bin_dir = Path(sys.executable).parent
    started = [subprocess.Popen([str(bin_dir / head[0]), *head[1:]], env=ray_env(), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        _wait_for_nodes(address, 1, started)
        started.append(subprocess.Popen([str(bin_dir / node[0]), *node[1:]], env=ray_env(), start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        _wait_for_nodes(address, 2, started)
        yield [psutil.Process(p.pid) for p in started]
    finally:
        ray.shutdown()
        for process in reversed(started):  # the process group `ray start --block` leads: its raylet and workers
            os.killpg(process.pid, signal.SIGKILL)  # (SIGTERM leaves the head's GCS server waiting for long)
        for process in started:
            process.wait(timeout=30)


def _wait_for_nodes(address: str, count: int, started) -> None:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if not ray.is_initialized():
        deadline = time.time() + 60
        while True:
            try:
                ray.init(address=address, logging_level="WARNING")
                break
            except Exception:
                if time.time() > deadline or any(p.poll() is not None for p in started):
                    raise
                time.sleep(0.5)
    deadline = time.time() + 60
    while sum(n["Alive"] for n in ray.nodes()) < count:
        assert time.time() < deadline, "the second node did not join"
        time.sleep(0.2)


def run_on_cluster(config, table, out, actors=True, tasks=4):
    from pipeline.run.ray_executor import RayExecutor, RaySettings

    return RayExecutor(RaySettings(tasks=tasks, actors=actors)).run(RunRequest(config, table, out))


def test_two_nodes_match_one_process_with_actors_and_with_tasks(cluster, reference, table, tiny_config, tmp_path):
    for actors in (True, False):
        out = tmp_path / ("actors" if actors else "tasks")
        summary = run_on_cluster(tiny_config, table, f"file://{out}", actors=actors)
        assert summary.manifest_written and summary.ok == ROWS and summary.invalid == 1
        assert hashes(out) == hashes(reference) and len(hashes(out)) == ROWS
        assert manifest(out) == manifest(reference)
        hosts = {json.loads(p.read_text())["rank"] for p in (out / "stats").glob("*.json")}
        assert hosts == {0, 1, 2, 3}  # per-task statistics, one file per shard
        assert json.loads((out / "run.json").read_text())["stats"]["ok"] == ROWS


def test_a_worker_killed_mid_shard_is_retried_and_the_output_matches(cluster, reference, table, tiny_config, tmp_path):
    out = tmp_path / "killed"
    results = []
    runner = threading.Thread(target=lambda: results.append(run_on_cluster(tiny_config, table, f"file://{out}",
                                                                           tasks=2)))  # fmt: skip
    runner.start()
    victim = _shard_worker_once_images_exist(out, cluster)
    os.kill(victim.pid, signal.SIGKILL)
    runner.join(timeout=240)
    assert results and results[0].manifest_written, "the run did not finish after the kill"
    assert hashes(out) == hashes(reference)
    rows = manifest(out)
    assert rows == manifest(reference) and len({r["id"] for r in rows}) == len(rows) == ROWS + 1


def _shard_worker_once_images_exist(out: Path, cluster: list[psutil.Process]) -> psutil.Process:
    """A worker of this module's cluster (not another Ray's on this machine) in the middle of a shard."""
    deadline = time.time() + 300  # a loaded 2-core machine starts Ray slowly
    while time.time() < deadline:
        if len(list((out / "images").rglob("*.png"))) >= 1:
            workers = [p for node in cluster for p in node.children(recursive=True) if _runs_a_shard(p)]
            if workers:
                return workers[0]
        time.sleep(0.05)
    pytest.fail("no shard under way within two minutes")


def _runs_a_shard(process: psutil.Process) -> bool:
    try:
        return " ".join(process.cmdline()).startswith("ray::ShardRunner.run")
    except psutil.Error:  # it ended meanwhile
        return False


def test_a_local_path_on_two_nodes_is_refused(cluster, table, tiny_config_file, tmp_path):
    result = CliRunner().invoke(cli, ["generate", str(table), "--out", str(tmp_path / "out"), "--config",
                                      str(tiny_config_file), "--executor", "ray"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "local path" in result.output and "file://" in result.output and "s3://" in result.output
    assert not (tmp_path / "out").exists()


def test_without_ray_the_cli_says_how_to_install_it(table, tiny_config_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    result = CliRunner().invoke(cli, ["generate", str(table), "--out", str(tmp_path), "--config",
                                      str(tiny_config_file), "--executor", "ray"])  # fmt: skip
    assert result.exit_code == 2 and "pip install 'layerdiffuse-batch[ray]'" in result.output


def test_shard_and_ray_exclude_each_other(table, tiny_config_file, tmp_path):
    result = CliRunner().invoke(cli, ["generate", str(table), "--out", str(tmp_path), "--config",
                                      str(tiny_config_file), "--executor", "ray", "--shard", "0/2"])  # fmt: skip
    assert result.exit_code == 2 and "one or the other" in result.output


def test_cli_on_its_own_cluster_killed_then_rerun_resumes(reference, table, tiny_config_file, tmp_path):
    """The driver's own cluster of this machine (two CPUs); SIGKILL on the driver ends its run and its cluster."""
    out = tmp_path / "driver"
    command = [sys.executable, "-m", "pipeline", "generate", str(table), "--out", str(out), "--config",
               str(tiny_config_file), "--executor", "ray", "--tasks", "3"]  # fmt: skip
    first = subprocess.Popen(command, cwd=REPO, env=ray_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_images(out, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert not (out / "manifest.jsonl").exists()
    rerun = subprocess.run(command, cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 3, rerun.stderr  # 3: the invalid row
    assert hashes(out) == hashes(reference)
    assert manifest(out) == manifest(reference)


def _wait_for_images(out: Path, process: subprocess.Popen) -> None:
    deadline = time.time() + 300  # a loaded 2-core machine starts Ray slowly
    while len(list((out / "images").rglob("*.png"))) < 2:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no images within five minutes"
        time.sleep(0.05)
