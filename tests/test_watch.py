"""A real `generate` run reports itself: webhooks, health pings and metrics, against a real HTTP server on
127.0.0.1 started by each test, on the tiny model."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from pipeline.cli import Seams, cli
from pipeline.common.storage import Storage
from pipeline.folder.lock import FolderLock
from pipeline.input.config import NotifyConfig
from pipeline.plan.sharding import Process
from pipeline.run.summary import Summary
from pipeline.unattended.watch import RunWatch, WatchedLog, manifest_outcomes, reports_end
from tests.conftest import REPO
from tests.helpers import hooked
from tests.test_notify import Receiver, closed_port_url

SECRET = "s3cret-for-the-test"
FAST = {"timeout": 0.4, "retries": 2, "backoff": 0.01}  # pings: 0.2 s, one retry
RUN_ID = re.compile(r"^out-(\d{8}T\d{6}Z)-[0-9a-f]{6}$")


@pytest.fixture
def receiver():
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def nightly_config(tiny_config_file: Path, folder: Path, **notify) -> Path:
    """The tiny test model's settings plus a `notify:` section."""
    data = yaml.safe_load(tiny_config_file.read_text())
    data["run"]["tta"] = False  # faster; nothing here depends on it
    data["notify"] = {**FAST, **notify}
    path = folder / "nightly.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def generate(table: Path, out: Path, config: Path, *extra: str, seams: Seams | None = None):
    args = ["generate", str(table), "--out", str(out), "--config", str(config), "--log-format", "json", *extra]
    return CliRunner(env={"LAYERDIFFUSE_WEBHOOK_SECRET": SECRET}).invoke(cli, args, catch_exceptions=False, obj=seams)


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def named(log: list[dict], name: str) -> list[dict]:
    return [e for e in log if e["event"] == name]


def metrics(path: Path) -> dict[str, dict[tuple, float]]:
    """{metric: {sorted label pairs: value}}, through prometheus_client's own text parser."""
    parsed: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            parsed.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return parsed


def one(values: dict[tuple, float]) -> float:
    assert len(values) == 1, values
    return next(iter(values.values()))


def rows(parsed: dict, **labels) -> dict[str, float]:
    found = {}
    for key, value in parsed["layerdiffuse_rows"].items():
        pairs = dict(key)
        outcome = pairs.pop("outcome")
        assert pairs == labels
        found[outcome] = value
    return found


def table(folder: Path, *lines: str) -> Path:
    path = folder / "t.csv"
    path.write_text("id,prompt,seed\n" + "".join(line + "\n" for line in lines))
    return path


def verify(request: dict) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, request["headers"]["X-Signature-SHA256"])


def paths(receiver: Receiver) -> list[str]:
    return [r["path"] for r in receiver.requests]


# ---------------------------------------------------------------- a run that finishes


def test_a_finished_run_posts_a_signed_report_pings_and_writes_metrics(receiver, tiny_config_file, tmp_path):
    hook = receiver.on("/hook/tok-A1")
    flaky = receiver.on("/flaky", 500)  # then 200: retried once
    unused = receiver.on("/from-the-config-file")
    check = receiver.on("/hc/uuid-7")
    config = nightly_config(tiny_config_file, tmp_path, webhooks=[unused], metrics_labels={"job": "nightly"})
    prom, out = tmp_path / "nightly.prom", tmp_path / "out"
    rows_csv = table(tmp_path, "a,one,1", "b,two,2", "bad,broken,-1")
    result = generate(rows_csv, out, config, "--notify", hook, "--notify", flaky, "--ping", check,
                      "--metrics-file", str(prom), "--metrics-interval", "0.05")  # fmt: skip
    assert result.exit_code == 3, result.stderr  # the invalid row

    [posted] = receiver.hits("/hook/tok-A1")
    assert posted["method"] == "POST" and posted["headers"]["Content-Type"] == "application/json"
    assert verify(posted)
    doc = json.loads(posted["body"])
    assert doc["status"] == "partial" and doc["exit_code"] == 3
    assert doc["counts"] == {"done": 2, "failed": 0, "flagged": 0, "skipped": 0, "invalid": 1}
    assert doc["out"] == str(out.resolve()) and doc["manifest"] == str(out.resolve() / "manifest.parquet")
    assert Path(doc["manifest"]).is_file()
    [failure] = doc["first_failures"]
    assert failure["key"] == "bad" and "column 'seed'" in failure["error"] and "-1" in failure["error"]
    started, finished = (datetime.fromisoformat(doc[k].replace("Z", "+00:00")) for k in ("started_at", "finished_at"))
    assert 0 < doc["duration_seconds"] == pytest.approx((finished - started).total_seconds(), abs=0.01)
    assert doc["images_per_second"] == pytest.approx(2 / doc["duration_seconds"], rel=0.01)
    assert RUN_ID.match(doc["run_id"])[1] == started.strftime("%Y%m%dT%H%M%SZ")

    retried = receiver.hits("/flaky")  # the 500 was retried with the same signed bytes
    assert len(retried) == 2 and retried[0]["body"] == retried[1]["body"] == posted["body"] and verify(retried[1])
    assert not receiver.hits("/from-the-config-file"), "--notify replaces the config file's webhooks"
    pings = [p for p in paths(receiver) if p.startswith("/hc/")]
    assert pings == ["/hc/uuid-7/start", "/hc/uuid-7/fail"]
    assert receiver.hits("/hc/uuid-7/fail")[0]["body"].decode() == doc["text"]

    parsed = metrics(prom)
    assert rows(parsed, job="nightly") == {"done": 2, "failed": 0, "flagged": 0, "skipped": 0, "invalid": 1}
    assert one(parsed["layerdiffuse_exit_code"]) == 3 and one(parsed["layerdiffuse_running"]) == 0
    assert one(parsed["layerdiffuse_run_start_timestamp_seconds"]) == pytest.approx(started.timestamp(), abs=0.01)
    assert one(parsed["layerdiffuse_last_success_timestamp_seconds"]) == 0  # exit 3 is no success

    log = events(result.stderr)
    assert SECRET not in result.stderr and "tok-A1" not in result.stderr and "uuid-7" not in result.stderr
    [start] = named(log, "reporting")
    assert start["run_id"] == doc["run_id"] and start["webhooks"] == [receiver.url + "/..."] * 2
    assert [e["attempts"] for e in named(log, "webhook_sent")] == [1, 2]
    [end] = named(log, "reported")
    assert (end["run_id"], end["status"], end["webhooks_delivered"]) == (doc["run_id"], "partial", 2)


def test_outcomes_of_a_launch_come_from_the_merged_manifest(receiver, tiny_config_file, tmp_path):
    """What the process that merges a launch's manifest reports: this run's rows, and those done before."""
    config = nightly_config(tiny_config_file, tmp_path)
    out = tmp_path / "out"
    rows_csv = table(tmp_path, "a,one,1", "bad,broken,-1")
    assert generate(rows_csv, out, config, "--notify", receiver.on("/h")).exit_code == 3
    doc = json.loads(receiver.hits("/h")[0]["body"])
    counts, failures = manifest_outcomes(Storage(out), since=doc["started_at"])
    assert counts.as_dict() == doc["counts"] == {"done": 1, "failed": 0, "flagged": 0, "skipped": 0, "invalid": 1}
    assert failures == [(f["key"], f["error"]) for f in doc["first_failures"]]
    later, _ = manifest_outcomes(Storage(out), since=doc["finished_at"])
    assert later.as_dict() == {"done": 0, "failed": 0, "flagged": 0, "skipped": 1, "invalid": 1}

    rerun = generate(rows_csv, out, config, "--notify", receiver.on("/again"))  # nothing to do: no model load
    assert rerun.exit_code == 3
    assert json.loads(receiver.hits("/again")[0]["body"])["counts"]["skipped"] == 1


def test_receivers_down_slow_or_failing_never_change_the_exit_code(receiver, tiny_config_file, tmp_path):
    config = nightly_config(tiny_config_file, tmp_path)
    down, slow = closed_port_url("/hook"), receiver.on("/slow", *[(200, 1.0)] * 3)  # slow: longer than the timeout
    failing = receiver.on("/err", 500, 503, 500)
    out, prom = tmp_path / "out", tmp_path / "m.prom"
    result = generate(table(tmp_path, "a,one,1"), out, config, "--notify", down, "--notify", slow,
                      "--notify", failing, "--ping", closed_port_url("/hc"), "--metrics-file", str(prom))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (out / "images" / "00000" / "a.png").is_file() and (out / "manifest.parquet").is_file()
    assert len(receiver.hits("/slow")) == 3 and len(receiver.hits("/err")) == 3  # 1 + FAST["retries"]
    log = events(result.stderr)
    failed = named(log, "webhook_failed")
    assert [e["attempts"] for e in failed] == [3, 3, 3] and "timed out" in failed[1]["message"]
    assert "HTTP 500" in failed[2]["message"]
    assert sorted(e["kind"] for e in named(log, "ping_failed")) == ["start", "success"]
    assert named(log, "reported")[0]["status"] == "ok" and named(log, "reported")[0]["webhooks_delivered"] == 0
    parsed = metrics(prom)
    assert one(parsed["layerdiffuse_exit_code"]) == 0 and one(parsed["layerdiffuse_last_success_timestamp_seconds"]) > 0


# ---------------------------------------------------------------- runs that end otherwise


def test_sigterm_reports_interrupted_and_metrics_are_written_while_running(receiver, tiny_config_file, tmp_path):
    config = nightly_config(tiny_config_file, tmp_path)
    out, prom = tmp_path / "out", tmp_path / "m.prom"
    command = [sys.executable, "-m", "pipeline", "generate", str(table(tmp_path, *[f"r{i},sprite {i},{i}" for i in
               range(4)])), "--out", str(out), "--config", str(config), "--log-format", "json", "--batch-size", "1",
               "--num-inference-steps", "40", "--notify", receiver.on("/hook"), "--ping", receiver.on("/hc"),
               "--metrics-file", str(prom), "--metrics-interval", "0.05"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "LAYERDIFFUSE_WEBHOOK_SECRET": SECRET}
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines = iter(json.loads(line) for line in process.stderr)
    assert next(e for e in lines if e["event"] == "batch_done")
    during = metrics(prom)  # the run is in its second batch of four
    assert one(during["layerdiffuse_running"]) == 1 and "layerdiffuse_exit_code" not in during
    assert one(during["layerdiffuse_run_duration_seconds"]) > 0
    process.send_signal(signal.SIGTERM)
    rest = list(lines)
    assert process.wait(timeout=300) == 130

    [posted] = receiver.hits("/hook")
    doc = json.loads(posted["body"])
    assert verify(posted) and (doc["status"], doc["exit_code"], doc["manifest"]) == ("interrupted", 130, None)
    assert 1 <= doc["counts"]["done"] < 4 and doc["counts"]["done"] == len(list((out / "images").rglob("*.png")))
    assert paths(receiver) == ["/hc/start", "/hc/fail", "/hook"]
    after = metrics(prom)
    assert one(after["layerdiffuse_exit_code"]) == 130 and one(after["layerdiffuse_running"]) == 0
    assert rows(after)["done"] == doc["counts"]["done"]
    assert [e["event"] for e in rest][-1] == "reported"


def test_an_error_after_the_run_took_its_folder_reports_failed(receiver, tiny_config_file, tmp_path):
    config = nightly_config(tiny_config_file, tmp_path)
    data = yaml.safe_load(config.read_text())
    data["model"]["base"] = str(tmp_path / "no-such-model")
    config.write_text(yaml.safe_dump(data))
    out, prom = tmp_path / "out", tmp_path / "m.prom"
    result = generate(table(tmp_path, "a,one,1"), out, config, "--notify", receiver.on("/hook"), "--ping",
                      receiver.on("/hc"), "--metrics-file", str(prom))  # fmt: skip
    assert result.exit_code == 4, result.stderr  # the model is missing: found after the lock was taken
    doc = json.loads(receiver.hits("/hook")[0]["body"])
    assert (doc["status"], doc["exit_code"], doc["manifest"]) == ("failed", 4, None)
    assert paths(receiver) == ["/hc/start", "/hc/fail", "/hook"]
    assert one(metrics(prom)["layerdiffuse_exit_code"]) == 4


def test_failed_rows_are_listed_and_too_many_failures_is_failed(receiver, tiny_config_file, tmp_path):
    def before(rows):  # a batch that runs out of memory, as on a GPU
        raise RuntimeError(f"CUDA out of memory (simulated) in {rows[0].key}")

    config = nightly_config(tiny_config_file, tmp_path)
    result = generate(table(tmp_path, "a,one,1", "b,two,2"), tmp_path / "out", config, "--max-failures", "0",
                      "--batch-size", "1", "--notify", receiver.on("/hook"), "--ping", receiver.on("/hc"),
                      seams=Seams(renderers=hooked(before)))  # fmt: skip
    assert result.exit_code == 7, result.stderr
    doc = json.loads(receiver.hits("/hook")[0]["body"])
    assert (doc["status"], doc["exit_code"], doc["counts"]["failed"]) == ("failed", 7, 1)
    assert doc["first_failures"] == [{"key": "a", "error": "RuntimeError: CUDA out of memory (simulated) in a"}]
    assert paths(receiver) == ["/hc/start", "/hc/fail", "/hook"]


def test_runs_refused_before_they_hold_the_folder_report_nothing(receiver, tiny_config_file, tmp_path):
    config = nightly_config(tiny_config_file, tmp_path)
    hook, check, prom = receiver.on("/hook"), receiver.on("/hc"), tmp_path / "m.prom"
    reporting = ["--notify", hook, "--ping", check, "--metrics-file", str(prom)]
    rows_csv = table(tmp_path, "a,one,1")

    bad = generate(rows_csv, tmp_path / "out", config, "--notify", "ftp://example.com/secret-token", *reporting)
    assert bad.exit_code == 2 and "--notify" in bad.stderr and "secret-token" not in bad.stderr
    assert not (tmp_path / "out").exists()
    assert generate(rows_csv, tmp_path / "out", config, "--metrics-file", "m.txt").exit_code == 2
    assert generate(tmp_path / "missing.csv", tmp_path / "out", config, *reporting).exit_code == 2

    held = tmp_path / "held"
    held.mkdir()
    with FolderLock(held):  # another run holds the folder: its metrics and health check are its own
        locked = generate(rows_csv, held, config, *reporting)
    assert locked.exit_code == 5, locked.stderr
    assert receiver.requests == [] and not prom.exists()


# ---------------------------------------------------------------- shards and launches


def test_a_shard_job_reports_itself_with_a_shard_run_id_and_label(tmp_path):
    prom, stream = tmp_path / "m.prom", io.StringIO()
    watch = RunWatch(tmp_path / "out", (1, 2), WatchedLog("json", stream=stream))
    watch.configure(NotifyConfig(metrics_file=str(prom), metrics_labels={"job": "nightly"}))
    watch.started(Process(rank=1, world_size=2))
    watch.planned(Summary(ok=2, skipped=1))
    assert re.fullmatch(r"out-\d{8}T\d{6}Z-[0-9a-f]{6}-shard-1-of-2", watch.run_id)
    assert one(metrics(prom)["layerdiffuse_running"]) == 1  # written as soon as the run holds its folder
    with pytest.raises(SystemExit), watch.reporting():
        sys.exit(0)
    parsed = metrics(prom)
    assert rows(parsed, job="nightly", shard="1/2") == {"done": 2, "failed": 0, "flagged": 0, "skipped": 1,
                                                        "invalid": 0}  # fmt: skip
    assert one(parsed["layerdiffuse_exit_code"]) == 0 and one(parsed["layerdiffuse_running"]) == 0
    log = events(stream.getvalue())
    assert [(e["event"], e["run_id"]) for e in log] == [("reporting", watch.run_id), ("reported", watch.run_id)]


def test_one_process_of_a_launch_reports_its_end():
    rank0, rank1 = Process(0, 2, launched=True), Process(1, 2, launched=True)
    merged, share = Summary(launched=True, manifest_written=True), Summary(launched=True)
    assert reports_end(rank1, merged, 3) and reports_end(rank0, merged, 0)  # the process that merged
    assert not reports_end(rank0, share, 0) and not reports_end(rank1, share, 0)  # a share done: others go on
    assert reports_end(rank0, share, 130) and not reports_end(rank1, share, 130)  # interrupted: rank 0 tells
    assert reports_end(rank0, None, 4) and not reports_end(rank1, None, 4)
    assert all(reports_end(Process(i, 2), s, c) for i in (0, 1) for s in (None, share) for c in (0, 3, 130))
