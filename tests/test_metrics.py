"""Prometheus textfile metrics: parsed back with prometheus_client's own text parser."""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.unattended.metrics import LAST_SUCCESS, MetricsSnapshot, MetricsUpdater, write_metrics
from pipeline.unattended.notify import OUTCOMES, RunCounts, RunReport

FAMILIES = {
    "layerdiffuse_rows",
    "layerdiffuse_images_per_second",
    "layerdiffuse_run_duration_seconds",
    "layerdiffuse_run_start_timestamp_seconds",
    "layerdiffuse_last_success_timestamp_seconds",
    "layerdiffuse_running",
    "layerdiffuse_exit_code",
}


def parse(path) -> dict[str, dict[tuple, float]]:
    """{family: {sorted label items: value}}; raises on anything the parser rejects."""
    families = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge"
        families[family.name] = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
    return families


def snapshot(done=0, exit_code=None, running=False, finished_at=None, **counts) -> MetricsSnapshot:
    return MetricsSnapshot(
        counts=RunCounts(done=done, **counts),
        images_per_second=done / 8.0,
        duration_seconds=8.0 + done,
        started_at=1_760_000_000.0,
        running=running,
        exit_code=exit_code,
        finished_at=finished_at,
    )


def test_values_help_and_type(tmp_path):
    path = tmp_path / "nightly.prom"
    shot = snapshot(done=12, failed=2, flagged=1, skipped=30, invalid=3, exit_code=3, finished_at=1_760_000_100.0)
    write_metrics(path, shot, labels={"job": "nightly"})
    metrics = parse(path)
    assert set(metrics) == FAMILIES
    job = (("job", "nightly"),)
    assert metrics["layerdiffuse_rows"] == {
        (("job", "nightly"), ("outcome", name)): getattr(shot.counts, name) for name in OUTCOMES
    }
    assert metrics["layerdiffuse_images_per_second"] == {job: 12 / 8.0}
    assert metrics["layerdiffuse_run_duration_seconds"] == {job: 20.0}
    assert metrics["layerdiffuse_run_start_timestamp_seconds"] == {job: 1_760_000_000.0}
    assert metrics["layerdiffuse_exit_code"] == {job: 3}
    assert metrics["layerdiffuse_running"] == {job: 0}
    assert metrics[LAST_SUCCESS] == {job: 0}  # never succeeded
    text = path.read_text()
    for name in FAMILIES:
        assert f"# HELP {name} " in text
        assert f"# TYPE {name} gauge" in text


def test_running_snapshot_has_no_exit_code_yet(tmp_path):
    path = tmp_path / "m.prom"
    write_metrics(path, snapshot(done=3, running=True))
    metrics = parse(path)
    assert metrics["layerdiffuse_running"] == {(): 1}
    assert metrics["layerdiffuse_rows"][(("outcome", "done"),)] == 3
    assert "layerdiffuse_exit_code" not in metrics


def test_last_success_moves_only_on_success(tmp_path):
    path = tmp_path / "m.prom"
    write_metrics(path, snapshot(done=1, exit_code=0, finished_at=1_760_000_500.0))
    assert parse(path)[LAST_SUCCESS] == {(): 1_760_000_500.0}
    for later in (
        snapshot(done=2, running=True),
        snapshot(exit_code=3),
        snapshot(exit_code=130),
        snapshot(exit_code=7),
    ):
        write_metrics(path, later)
        metrics = parse(path)
        assert metrics[LAST_SUCCESS] == {(): 1_760_000_500.0}
        assert metrics.get("layerdiffuse_exit_code") == (None if later.running else {(): later.exit_code})
    write_metrics(path, snapshot(done=4, exit_code=0, finished_at=1_760_086_900.0))
    assert parse(path)[LAST_SUCCESS] == {(): 1_760_086_900.0}


def test_damaged_previous_file_is_replaced(tmp_path):
    path = tmp_path / "m.prom"
    path.write_text("this is not { the text format\n")
    write_metrics(path, snapshot(exit_code=3))
    assert parse(path)[LAST_SUCCESS] == {(): 0}


def test_rewrites_are_atomic(tmp_path):
    """A reader polling the file never sees it half-written; each write replaces the file (new inode)."""
    path = tmp_path / "m.prom"
    write_metrics(path, snapshot(done=0, exit_code=3))
    seen, errors, stop = [], [], threading.Event()

    def read_constantly():
        while not stop.is_set():
            try:
                metrics = parse(path)
                done = metrics["layerdiffuse_rows"][(("outcome", "done"),)]
                # one snapshot's values belong together: duration = 8 + done
                assert metrics["layerdiffuse_run_duration_seconds"][()] == 8 + done
                assert set(metrics) == FAMILIES
                seen.append(done)
            except Exception as exc:  # noqa: BLE001 - any failure to read a whole file is the finding
                errors.append(exc)

    reader = threading.Thread(target=read_constantly)
    reader.start()
    inodes = set()
    for i in range(1, 150):
        write_metrics(path, snapshot(done=i, exit_code=3))
        inodes.add(os.stat(path).st_ino)
    stop.set()
    reader.join()
    assert errors == []
    assert len(seen) > 10 and seen == sorted(seen)
    assert len(inodes) > 1  # replaced by rename, not rewritten in place
    assert os.listdir(tmp_path) == ["m.prom"]  # no temporary file left behind
    assert parse(path)["layerdiffuse_rows"][(("outcome", "done"),)] == 149


def test_snapshot_from_report(tmp_path):
    started = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc)
    report = RunReport(
        run_id="r",
        status="ok",
        exit_code=0,
        counts=RunCounts(done=5, skipped=1),
        started_at=started,
        finished_at=started + timedelta(seconds=50),
        duration_seconds=50.0,
        images_per_second=0.1,
        out="out",
        manifest="out/manifest.parquet",
    )
    path = tmp_path / "m.prom"
    write_metrics(path, MetricsSnapshot.from_report(report))
    metrics = parse(path)
    assert metrics[LAST_SUCCESS] == {(): report.finished_at.timestamp()}
    assert metrics["layerdiffuse_run_start_timestamp_seconds"] == {(): started.timestamp()}
    assert metrics["layerdiffuse_rows"][(("outcome", "skipped"),)] == 1


def test_bad_label_names_are_refused(tmp_path):
    for labels in ({"outcome": "x"}, {"bad-name": "x"}, {"__reserved": "x"}):
        with pytest.raises(ValueError, match="label names"):
            write_metrics(tmp_path / "m.prom", snapshot(), labels=labels)


class Progress:
    """The state a run loop would expose to the updater."""

    def __init__(self):
        self.done, self.exit_code = 0, None

    def snapshot(self) -> MetricsSnapshot:
        running = self.exit_code is None
        return snapshot(done=self.done, running=running, exit_code=self.exit_code, finished_at=time.time())


def wait_for(path, predicate, seconds=3.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and predicate(parse(path)):
            return True
        time.sleep(0.01)
    return False


def test_updater_rewrites_while_running_and_closes_with_the_exit_code(tmp_path):
    path, progress = tmp_path / "m.prom", Progress()
    with pytest.raises(SystemExit), MetricsUpdater(path, progress.snapshot, interval=0.02, labels={"job": "t"}):
        assert parse(path)["layerdiffuse_running"] == {(("job", "t"),): 1}  # written on entry
        progress.done = 5
        assert wait_for(path, lambda m: m["layerdiffuse_rows"][(("job", "t"), ("outcome", "done"))] == 5)
        sys.exit(3)
    metrics = parse(path)
    assert metrics["layerdiffuse_running"] == {(("job", "t"),): 0}
    assert metrics["layerdiffuse_exit_code"] == {(("job", "t"),): 3}
    assert metrics[LAST_SUCCESS] == {(("job", "t"),): 0}
    assert not [t for t in threading.enumerate() if t.name == "metrics:m.prom"]


def test_updater_success_and_interrupt(tmp_path):
    path, progress = tmp_path / "m.prom", Progress()
    with MetricsUpdater(path, progress.snapshot, interval=60):
        progress.done, progress.exit_code = 2, 0
    assert parse(path)["layerdiffuse_exit_code"] == {(): 0}
    succeeded_at = parse(path)[LAST_SUCCESS][()]
    assert succeeded_at > 0
    with pytest.raises(KeyboardInterrupt), MetricsUpdater(path, Progress().snapshot, interval=60):
        raise KeyboardInterrupt
    metrics = parse(path)
    assert metrics["layerdiffuse_exit_code"] == {(): 130}
    assert metrics[LAST_SUCCESS] == {(): succeeded_at}


def test_updater_never_raises_on_write_errors(tmp_path):
    logged = []
    path = tmp_path / "missing-folder" / "m.prom"
    with MetricsUpdater(path, Progress().snapshot, interval=0.01, log=lambda *a, **f: logged.append((a, f))):
        time.sleep(0.05)
    assert not path.exists()
    assert len(logged) == 1
    assert logged[0][0][0] == "metrics_failed"
    assert str(path) in logged[0][0][1]
