"""Named moments at which a test can kill this process, to prove that any instant is a safe one.

`LAYERDIFFUSE_FAULT=<moment>` (or `<moment>:<n>`, the n-th time it is reached) makes the process SIGKILL
itself there: no cleanup, no flush, exactly what a power cut or the OOM killer does. `<moment>:<n>:<SIGNAL>`
sends that signal instead (e.g. `planned:1:SIGTERM`: what systemd or a Ctrl-C does at that instant). Unset,
a fault point costs one comparison.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENV = "LAYERDIFFUSE_FAULT"
MOMENTS = (
    "planned",  # the run decided what to do; nothing written yet
    "keys_written",
    "model_loaded",
    "batch_generated",  # a batch's images are in memory
    "png_temp_written",  # a PNG is complete under its temporary name
    "png_in_place",  # renamed into place, its record not yet appended
    "record_appended",
    "batch_recorded",  # every row of a batch has its record
    "manifest_parquet_written",  # manifest.parquet in place, manifest.jsonl not yet
    "manifest_jsonl_written",  # both in place, the checkpoint not yet
    "merged",  # the checkpoint too; the run statistics not yet
)
OUTPUT_MOMENTS = (  # files derived from the images, complete under their temporary names
    "sprite_temp_written",  # sprites, and generate with sprite settings
    "thumbnail_temp_written",  # report
    "sheet_temp_written",  # atlas
)
_target, _, _rest = os.environ.get(ENV, "").partition(":")
_count, _, _signal = _rest.partition(":")
_reached: Counter = Counter()
_counting = threading.Lock()  # post-processing threads reach some moments


def fault_point(moment: str) -> None:
    if moment != _target:
        return
    with _counting:
        _reached[moment] += 1
        reached = _reached[moment]
    if reached == int(_count or 1):  # once: a second SIGINT would abort
        os.kill(os.getpid(), signal.Signals[_signal or "SIGKILL"])
