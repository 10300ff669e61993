"""Prometheus textfile metrics for node_exporter's textfile collector (`--metrics-file PATH.prom`).

The file is rewritten whole, atomically, from a fresh registry: prometheus_client's `write_to_textfile`
writes `PATH.<pid>.<thread>` beside it and renames it over PATH (rename(2) is atomic on one filesystem,
and node_exporter reads only `*.prom`, so it never sees the temporary file or half a file).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ..common.exits import ExitCode
from ..input.unattended_settings import check_labels
from .notify import OUTCOMES, LogFn, RunCounts, RunReport

PREFIX = "layerdiffuse_"
LAST_SUCCESS = PREFIX + "last_success_timestamp_seconds"


@dataclass(frozen=True)
class MetricsSnapshot:
    """The run's state at one moment; times are Unix seconds."""

    counts: RunCounts
    images_per_second: float
    duration_seconds: float
    started_at: float
    running: bool
    exit_code: int | None = None  # None while running
    finished_at: float | None = None

    @classmethod
    def from_report(cls, report: RunReport) -> MetricsSnapshot:
        """The final snapshot of a finished run."""
        return cls(
            counts=report.counts,
            images_per_second=report.images_per_second,
            duration_seconds=report.duration_seconds,
            started_at=report.started_at.timestamp(),
            running=False,
            exit_code=report.exit_code,
            finished_at=report.finished_at.timestamp(),
        )

    @property
    def succeeded(self) -> bool:
        return not self.running and self.exit_code == ExitCode.OK


def write_metrics(path: str | Path, snapshot: MetricsSnapshot, labels: Mapping[str, str] | None = None) -> None:
    """Rewrite `path` atomically with the snapshot's metrics, each with `# HELP` and `# TYPE`.

    `labels` (e.g. {"job": "nightly"}) go on every sample, so several jobs can share node_exporter's
    textfile directory. The last-success timestamp moves only when the snapshot is a success (exit 0);
    otherwise it is carried over from the file being replaced (0 if there is none: never succeeded).
    """
    from prometheus_client import CollectorRegistry, write_to_textfile

    labels = check_labels(labels)
    if snapshot.succeeded:
        last_success = snapshot.finished_at if snapshot.finished_at is not None else time.time()
    else:
        last_success = previous_value(path, LAST_SUCCESS, labels)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Families(_families(snapshot, labels, last_success)))
    write_to_textfile(str(path), registry)


def previous_value(path: str | Path, name: str, labels: Mapping[str, str]) -> float:
    """The value of metric `name` with exactly `labels` in an existing textfile; 0.0 if absent or unreadable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for family in text_string_to_metric_families(Path(path).read_text(encoding="utf-8")):
            for sample in family.samples:
                if sample.name == name and sample.labels == dict(labels):
                    return sample.value
    except (OSError, ValueError, UnicodeDecodeError):
        pass  # no file yet, or one damaged by hand: start afresh
    return 0.0


def _families(snapshot: MetricsSnapshot, labels: dict[str, str], last_success: float) -> list:
    from prometheus_client.core import GaugeMetricFamily

    def gauge(name: str, doc: str, value: float | None = None) -> GaugeMetricFamily:
        family = GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))
        if value is not None:
            family.add_metric(list(labels.values()), value)
        return family

    doc = "Rows of the current or latest run by outcome (done includes flagged; skipped: done before)."
    rows = GaugeMetricFamily(PREFIX + "rows", doc, labels=[*labels, "outcome"])
    for outcome in OUTCOMES:
        rows.add_metric([*labels.values(), outcome], getattr(snapshot.counts, outcome))
    families = [
        rows,
        gauge("images_per_second", "Images generated per second by the current or latest run.",
              snapshot.images_per_second),
        gauge("run_duration_seconds", "Wall-clock seconds of the current or latest run.", snapshot.duration_seconds),
        gauge("run_start_timestamp_seconds", "Unix time the current or latest run started.", snapshot.started_at),
        gauge("last_success_timestamp_seconds", "Unix time the latest run with exit code 0 ended (0: never).",
              last_success),
        gauge("running", "1 while a run is in progress, 0 once it has ended.", 1 if snapshot.running else 0),
    ]  # fmt: skip
    if snapshot.exit_code is not None:
        families.append(gauge("exit_code", "Exit code of the latest finished run (0 ok, 3 rows failed...).",
                              snapshot.exit_code))  # fmt: skip
    return families


class _Families:
    """A collector that hands out a fixed list of metric families (one snapshot, one registry)."""

    def __init__(self, families: list):
        self._families = families

    def collect(self):
        return list(self._families)


class MetricsUpdater:
    """Rewrites the metrics file on entry, every `interval` seconds in a daemon thread, and once more on exit.

    `snapshot()` is called from that thread too, so it should only read plain counters. On exit, a snapshot
    still marked running is closed with the exit code of the exception leaving the block (SystemExit's
    code, 130 for KeyboardInterrupt, 1 for anything else). Writing never raises: the first failure logs a
    `metrics_failed` warning.
    """

    def __init__(
        self,
        path: str | Path,
        snapshot: Callable[[], MetricsSnapshot],
        interval: float = 15.0,
        labels: Mapping[str, str] | None = None,
        log: LogFn | None = None,
    ):
        self.path, self.interval, self.labels = Path(path), interval, check_labels(labels)
        self._snapshot, self._log = snapshot, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"metrics:{self.path.name}", daemon=True)
        self._warned = False

    def __enter__(self) -> MetricsUpdater:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(lambda: _closed(self._snapshot(), exc))

    def start(self) -> MetricsUpdater:
        """Write the file now, then every `interval` seconds until `stop`."""
        self._write(self._snapshot)
        self._thread.start()
        return self

    def stop(self, final: MetricsSnapshot | Callable[[], MetricsSnapshot] | None = None) -> None:
        """End the rewrites and write `final` (a snapshot, or a function giving one); None leaves the file as
        last written, for a process whose run goes on in another (the last process of a launch reports)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if final is not None:
            self._write(final if callable(final) else lambda: final)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._write(self._snapshot)

    def _write(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        try:
            write_metrics(self.path, snapshot(), self.labels)
        except Exception as exc:
            if not self._warned and self._log is not None:
                self._log("metrics_failed", f"cannot write metrics file {self.path}: {exc}", path=str(self.path))
            self._warned = True


def _closed(snapshot: MetricsSnapshot, exc: BaseException | None) -> MetricsSnapshot:
    if not snapshot.running:
        return snapshot
    code = snapshot.exit_code if snapshot.exit_code is not None else exit_code_of(exc)
    return replace(snapshot, running=False, exit_code=code, finished_at=time.time())


def exit_code_of(exc: BaseException | None) -> int | None:
    """The exit code a process leaving with `exc` gets: SystemExit's code, 130 for Ctrl-C, else 1; None: none."""
    if exc is None:
        return None
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return ExitCode.INTERRUPTED if isinstance(exc, KeyboardInterrupt) else ExitCode.INTERNAL
