"""What a run reports while it runs and when it ends: its counts, and the observer that watches it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..common.exits import ExitCode

if TYPE_CHECKING:
    from ..plan.sharding import Process


@dataclass
class Summary:
    ok: int = 0
    flagged: int = 0  # written as fully transparent placeholders by the safety checker
    skipped: int = 0
    failed: int = 0
    invalid: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    manifest_written: bool = False
    unfinished_in_manifest: int = 0  # failed or invalid rows in the merged manifest
    launched: bool = False  # one of several processes of an accelerate/torchrun launch

    @property
    def images_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict:
        """The fields of the `summary` log event."""
        names = ("ok", "flagged", "skipped", "failed", "invalid", "interrupted")
        return {**{n: getattr(self, n) for n in names}, "seconds": round(self.seconds, 2),
                "images_per_second": round(self.images_per_second, 3), "manifest": self.manifest_written}  # fmt: skip

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.launched and not self.manifest_written:
            # The launcher ends every sibling when one process exits non-zero; the process that
            # merges the manifest (the last to finish) reports for the whole run.
            return ExitCode.OK
        return ExitCode.ROWS if self.failed or self.invalid or self.unfinished_in_manifest else ExitCode.OK


class Observer(Protocol):
    """Watches a run from outside (pipeline/unattended/watch.py reports it to webhooks, pings and metrics)."""

    def started(self, process: Process) -> None:
        """The folder lock is held: the run is this folder's now (called on every process of a launch)."""

    def planned(self, summary: Summary) -> None:
        """The run's live summary, whose counts grow as rows finish."""


@dataclass
class StageTimes:
    """Seconds per stage, for the run statistics; thread-safe (post-processing threads add their stages)."""

    seconds: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def spend(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
