"""A run reports itself: health pings, Prometheus textfile metrics and webhooks, from one observer.

`RunWatch` wraps the `generate` command (`reporting()`) and is handed to the executor as its observer,
so it sees the three moments that matter:
- the folder lock is held (`started`): the run id is made, the metrics file starts being rewritten and
  `PING/start` goes out (in the background: a slow health-check service never delays the run);
- the plan is made (`planned`): the live summary whose counts the metrics show;
- the process ends, however it ends (`reporting`): its exit code gives the status, then come the final
  metrics, the success or fail ping and the webhooks. All best effort: the exit code stays the run's.

A run refused before it holds its folder (bad flags, config or table: exit 2; another run in the folder:
exit 5) reports nothing: the folder, its metrics and its health check belong to the run that holds it.

Which process reports: a plain run, and each `--shard I/N` job (an independent job with its own exit
code), reports itself. In an accelerate/torchrun launch, rank 0 (which holds the lock) pings start and
rewrites the metrics; the end is reported by the process that writes the merged manifest (its exit code
speaks for the whole run), with the whole run's counts from that manifest, or, when no process writes
it, by rank 0 if it was interrupted or failed.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..common.clock import iso_utc
from ..common.logs import Log
from ..folder.schema import Status
from .notify import FIRST_FAILURES

if TYPE_CHECKING:
    from ..input.config import NotifyConfig
    from ..plan.sharding import Process
    from ..run.summary import Summary
    from .metrics import MetricsSnapshot, MetricsUpdater
    from .notify import RunCounts, RunReport

FAILURE_EVENTS = ("invalid_row", "row_failed")  # the log events that name a row (`id`) and its error


class WatchedLog(Log):
    """The run's log, which also keeps the first failed or invalid rows it reports, for the webhook."""

    def __init__(self, fmt: str = "text", rank: int = 0, stream=None):
        super().__init__(fmt, rank, stream)
        self.failures: list[tuple[str, str]] = []

    def event(self, name: str, message: str = "", **fields) -> None:
        if name in FAILURE_EVENTS and len(self.failures) < FIRST_FAILURES:
            self.failures.append((str(fields.get("id")), message))
        super().event(name, message, **fields)


class RunWatch:
    """Reports one `generate` run as `NotifyConfig` asks; inert until `configure` gets something to do."""

    def __init__(self, out: str | Path, shard: tuple[int, int] | None, log: WatchedLog):
        from ..common.storage import Storage

        self.storage, self.shard, self.log = Storage(out), shard, log
        self.settings: NotifyConfig | None = None
        self.run_id: str | None = None
        self._process: Process | None = None  # set once the run holds its folder
        self._summary: Summary | None = None
        self._started_at = datetime.now(timezone.utc)
        self._clock = time.perf_counter()
        self._metrics: MetricsUpdater | None = None
        self._start_ping: threading.Thread | None = None

    def configure(self, settings: NotifyConfig) -> None:
        self.settings = settings if settings.active else None

    # ---------------------------------------------------------------- run.Observer

    def started(self, process: Process) -> None:
        if self.settings is None:
            return
        self._started_at, self._clock = datetime.now(timezone.utc), time.perf_counter()
        self.run_id = process.share_from_main(self._new_run_id())  # one id for every process of a launch
        self._process = process
        if process.launched and not process.is_main:
            return
        self._announce()
        self._start_metrics()
        self._ping_start()

    def planned(self, summary: Summary) -> None:
        self._summary = summary

    # ---------------------------------------------------------------- the end

    @contextmanager
    def reporting(self):
        """Around the whole command: reports with the exit code the process leaves with, then lets it leave."""
        from .metrics import exit_code_of

        try:
            yield self
        except BaseException as exc:  # SystemExit carries every exit code of `generate`
            self.finish(exit_code_of(exc))
            raise
        else:
            self.finish(0)

    def finish(self, exit_code: int) -> None:
        """Report the end of the run; never raises (a second Ctrl-C still aborts)."""
        if self.settings is None or self._process is None:
            return  # nothing asked for, or the run never held its folder
        try:
            self._finish(int(exit_code))
        except Exception as exc:  # a bug here must not cost the run its exit code
            self.log.event("report_failed", f"the run could not be reported: {type(exc).__name__}: {exc}")

    def _finish(self, code: int) -> None:
        from .metrics import MetricsSnapshot
        from .notify import SECRET_ENV, ping, post_webhooks

        if self._start_ping is not None:
            self._start_ping.join()  # the service must see start before success or fail
        if not reports_end(self._process, self._summary, code):
            self._stop_metrics(None)  # the process that finishes the launch writes the final values
            return
        report, settings = self.report(code), self.settings
        self._stop_metrics(MetricsSnapshot.from_report(report))
        if settings.ping:
            kind = "success" if code == 0 else "fail"
            ping(settings.ping, kind, body=report.summary_line().encode(), log=self.log.event, **self._ping_timing())
        secret = os.environ.get(SECRET_ENV) or None
        delivered = post_webhooks(settings.webhooks, report, secret, log=self.log.event, **self._webhook_timing())
        self.log.event("reported", report.summary_line(), run_id=report.run_id, status=report.status,
                       webhooks_delivered=sum(delivered))  # fmt: skip

    def report(self, code: int) -> RunReport:
        """The webhook document of the run ending now with exit code `code`."""
        from ..folder.layout import MANIFEST_PARQUET
        from .notify import RunReport, first_failures, run_status

        finished_at, duration = datetime.now(timezone.utc), time.perf_counter() - self._clock
        summary = self._summary
        if summary is not None and summary.launched and summary.manifest_written:
            counts, failures = manifest_outcomes(self.storage, since=iso_utc(self._started_at))
        else:
            counts, failures = summary_counts(summary), self.log.failures
        manifest = self.storage.shown(MANIFEST_PARQUET) if summary is not None and summary.manifest_written else None
        return RunReport(
            run_id=self.run_id,
            status=run_status(code, counts),
            exit_code=code,
            counts=counts,
            started_at=self._started_at,
            finished_at=finished_at,
            duration_seconds=duration,
            images_per_second=counts.done / duration if duration > 0 else 0.0,
            out=self.storage.shown(""),
            manifest=manifest,
            first_failures=first_failures(failures),
        )

    # ---------------------------------------------------------------- pieces

    def _new_run_id(self) -> str:
        """`<output folder name>-<UTC start>-<6 hex>`, plus `-shard-I-of-N` for a shard job."""
        name = self.storage.root.rstrip("/").rsplit("/", 1)[-1] or "out"
        run_id = f"{name}-{self._started_at.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
        return run_id + (f"-shard-{self.shard[0]}-of-{self.shard[1]}" if self.shard else "")

    def _announce(self) -> None:
        from .notify import redact

        settings = self.settings
        self.log.event("reporting", "", run_id=self.run_id, webhooks=[redact(u) for u in settings.webhooks],
                       ping=redact(settings.ping) if settings.ping else None,
                       metrics_file=settings.metrics_file)  # fmt: skip

    def _start_metrics(self) -> None:
        from .metrics import MetricsUpdater

        if self.settings.metrics_file:
            self._metrics = MetricsUpdater(self.settings.metrics_file, self._snapshot, self.settings.metrics_interval,
                                           self._labels(), log=self.log.event).start()  # fmt: skip

    def _stop_metrics(self, final: MetricsSnapshot | None) -> None:
        from .metrics import MetricsUpdater

        if self._metrics is not None:
            self._metrics.stop(final)
        elif final is not None and self.settings.metrics_file:  # the last process of a launch: never started one
            MetricsUpdater(self.settings.metrics_file, self._snapshot, labels=self._labels(), log=self.log.event).stop(
                final
            )

    def _labels(self) -> dict[str, str]:
        labels = dict(self.settings.metrics_labels)
        if self.shard:  # shard jobs write one file each; distinct labels let node_exporter read them side by side
            labels.setdefault("shard", f"{self.shard[0]}/{self.shard[1]}")
        return labels

    def _snapshot(self) -> MetricsSnapshot:
        from .metrics import MetricsSnapshot

        counts, elapsed = summary_counts(self._summary), time.perf_counter() - self._clock
        rate = counts.done / elapsed if elapsed > 0 else 0.0
        return MetricsSnapshot(counts, rate, elapsed, self._started_at.timestamp(), running=True)

    def _ping_start(self) -> None:
        from .notify import ping

        if self.settings.ping:
            kwargs = {**self._ping_timing(), "log": self.log.event}
            self._start_ping = threading.Thread(target=ping, args=(self.settings.ping, "start"), kwargs=kwargs,
                                                name="ping:start", daemon=True)  # fmt: skip
            self._start_ping.start()

    def _webhook_timing(self) -> dict:
        s = self.settings
        return {"timeout": s.timeout, "retries": s.retries, "backoff": s.backoff}

    def _ping_timing(self) -> dict:
        s = self.settings
        return {"timeout": s.timeout / 2, "retries": max(s.retries - 1, 0), "backoff": s.backoff / 2}


def reports_end(process: Process, summary: Summary | None, exit_code: int) -> bool:
    """Whether this process reports how the run ended: always, unless it is one process of a launch that
    neither wrote the merged manifest nor is rank 0 ending with an error or interruption."""
    if not process.launched or (summary is not None and summary.manifest_written):
        return True
    return process.is_main and exit_code != 0  # a share finished cleanly: the last process reports


def summary_counts(summary: Summary | None) -> RunCounts:
    """This process's rows by outcome (`done` includes flagged rows, as the summary's `ok` does)."""
    from .notify import RunCounts

    if summary is None:
        return RunCounts()
    return RunCounts(done=summary.ok, failed=summary.failed, flagged=summary.flagged, skipped=summary.skipped,
                     invalid=summary.invalid)  # fmt: skip


def manifest_outcomes(storage, since: str) -> tuple[RunCounts, list[tuple[str, str]]]:
    """A whole launch's counts and failed or invalid rows, from its merged manifest's columns.

    Rows finished since `since` (this run's start, as the records' `finished_at`: UTC ISO text) were done
    by this run; older ones by an earlier run, which ended before this one took the folder's lock.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ..folder.layout import MANIFEST_PARQUET
    from .notify import RunCounts

    columns = ["id", "status", "error", "has_nsfw_concepts", "finished_at"]
    table = pq.read_table(storage.path(MANIFEST_PARQUET), filesystem=storage.fs, columns=columns)
    start = pa.scalar(datetime.fromisoformat(since.replace("Z", "+00:00")), pa.timestamp("ms", tz="UTC"))
    status = table.column("status")
    ok = pc.equal(status, Status.OK.value)
    fresh = pc.and_(ok, pc.fill_null(pc.greater_equal(table.column("finished_at"), start), False))
    flagged = pc.and_(fresh, pc.fill_null(table.column("has_nsfw_concepts"), False))
    unfinished = table.filter(pc.is_in(status, pa.array([Status.FAILED.value, Status.INVALID.value])))
    head = unfinished.slice(0, 100)
    failures = list(zip(head.column("id").to_pylist(), head.column("error").to_pylist(), strict=True))

    def count(mask) -> int:
        return pc.sum(mask).as_py() or 0

    return RunCounts(done=count(fresh), skipped=count(ok) - count(fresh), flagged=count(flagged),
                     failed=count(pc.equal(status, Status.FAILED.value)),
                     invalid=count(pc.equal(status, Status.INVALID.value))), failures  # fmt: skip
