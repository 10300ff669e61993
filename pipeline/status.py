"""Counts of done / failed / invalid / pending rows in an output folder, from its files alone."""

from __future__ import annotations

from pathlib import Path

from .manifest import latest_records, read_run_info
from .records import Status
from .resume import is_done


def folder_status(out_dir: Path) -> dict[str, int]:
    info = read_run_info(out_dir)
    latest = latest_records(out_dir)
    counts = {"total": info["total_rows"], "done": 0, "failed": 0, "invalid": 0, "pending": 0}
    for key in info["keys"]:
        record = latest.get(key)
        if is_done(out_dir, record):
            counts["done"] += 1
        elif record and record.get("status") in (Status.FAILED.value, Status.INVALID.value):
            counts[record["status"]] += 1
        else:
            counts["pending"] += 1
    return counts
