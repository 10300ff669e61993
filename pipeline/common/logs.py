"""Run logs for people (text, progress bar on a terminal) and for cron jobs (one JSON object per line)."""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager

from .clock import utc_now
from .storage import scrub

SHOWN_BY_BAR = {"batch_done"}


class Log:
    def __init__(self, fmt: str = "text", rank: int = 0, stream=None):
        self.fmt = fmt
        self.rank = rank
        self.stream = stream or sys.stderr
        self._bar = None
        # events come from the model's thread, the post-processing committer and signal handlers (re-entrant)
        self._lock = threading.RLock()

    def event(self, name: str, message: str = "", **fields) -> None:
        if self.fmt == "json":
            record = {"ts": utc_now(), "event": name, "rank": self.rank, **fields}
            if message:
                record["message"] = message
            line = json.dumps(record, ensure_ascii=False, default=str)
        else:
            details = " ".join(f"{k}={_short(v)}" for k, v in fields.items())
            prefix = f"[rank {self.rank}] " if self.rank else ""
            gap = "  " if message and details else ""
            line = f"{time.strftime('%H:%M:%S')} {prefix}{name}: {message}{gap}{details}"
        line = scrub(line)  # a credential read from a URL never reaches a log
        with self._lock:  # one write per line: lines from two threads never interleave
            if self._bar is None:
                self.stream.write(line + "\n")
                self.stream.flush()
            elif name not in SHOWN_BY_BAR:
                self._bar.write(line, file=self.stream)  # above the bar, which is redrawn below

    @contextmanager
    def progress(self, total: int, desc: str = "images"):
        """A tqdm bar on an interactive terminal with text logs; silent otherwise (events carry progress)."""
        use_bar = self.fmt == "text" and total > 0 and getattr(self.stream, "isatty", lambda: False)()
        if not use_bar:
            yield lambda n=1: None
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="img", file=self.stream, dynamic_ncols=True) as bar:
            self._bar = bar
            try:
                yield bar.update
            finally:
                self._bar = None


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
