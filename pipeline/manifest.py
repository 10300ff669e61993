"""Manifest records: reading the per-process parts, picking each row's latest outcome, merging in input order."""

from __future__ import annotations

import json
from pathlib import Path

from .faults import fault_point
from .schema import to_arrow
from .writer import write_atomic

PARTS = "parts"
MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_PARQUET = "manifest.parquet"
RUN_INFO = "run.json"


def part_paths(out_dir: Path) -> list[Path]:
    """Parts sort by their names, which start with the run's start time: later parts win."""
    return sorted((out_dir / PARTS).glob("*.jsonl"))


def read_part(path: Path) -> list[dict]:
    """Complete lines only: a line cut short by a crash is ignored (its row is simply redone)."""
    records = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.endswith("\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def latest_records(out_dir: Path) -> dict[str, dict]:
    """{row key: its most recent record} over every part."""
    latest: dict[str, dict] = {}
    for path in part_paths(out_dir):
        for record in read_part(path):
            latest[record["id"]] = record
    return latest


def merge(out_dir: Path, keys: list[str] | None = None) -> list[dict] | None:
    """Write the merged manifest once every row has an outcome and return its records; else None.

    Any process may call it at any time: the manifest is complete or not written, and writes are atomic.
    """
    keys = keys if keys is not None else read_run_info(out_dir)["keys"]
    latest = latest_records(out_dir)
    if any(key not in latest for key in keys):
        return None
    records = [latest[key] for key in keys]
    write_manifest(out_dir, records)
    return records


def missing_keys(out_dir: Path) -> list[str]:
    """Rows of the folder's table that have no outcome yet."""
    latest = latest_records(out_dir)
    return [key for key in read_run_info(out_dir)["keys"] if key not in latest]


def write_run_info(out_dir: Path, info: dict) -> None:
    write_atomic(out_dir / RUN_INFO, (json.dumps(info, indent=1, default=str) + "\n").encode())


def read_run_info(out_dir: Path) -> dict:
    """What `generate` recorded about the table: input path, row count and row keys in input order."""
    return json.loads((out_dir / RUN_INFO).read_text(encoding="utf-8"))


def write_manifest(out_dir: Path, records: list[dict]) -> None:
    """manifest.jsonl and manifest.parquet, each replaced atomically."""
    lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    write_atomic(out_dir / MANIFEST_JSONL, lines.encode("utf-8"))
    fault_point("manifest_jsonl_written")
    write_atomic(out_dir / MANIFEST_PARQUET, _parquet_bytes(records))
    fault_point("manifest_parquet_written")


def _parquet_bytes(records: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(to_arrow(records), sink)
    return sink.getvalue().to_pybytes()


def read_manifest(out_dir: Path) -> list[dict]:
    path = out_dir / MANIFEST_JSONL
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
