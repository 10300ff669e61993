"""Manifest records: reading the per-process parts, picking each row's latest outcome, merging in input order."""

from __future__ import annotations

import json
from pathlib import Path

from .records import STATUS_INVALID, InvalidRow, Row
from .writer import write_atomic

PARTS = "parts"
MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_PARQUET = "manifest.parquet"


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


def invalid_record(row: InvalidRow) -> dict:
    return {**row.values, "id": row.key, "row": row.number, "status": STATUS_INVALID, "error": row.error}


def final_records(out_dir: Path, rows: list[Row], invalid: list[InvalidRow]) -> list[dict] | None:
    """Every table row's final record in input order, or None while some row has no outcome yet."""
    latest = latest_records(out_dir)
    ordered = sorted([(r.number, r.key) for r in rows] + [(r.number, r.key) for r in invalid])
    records = [latest.get(key) for _, key in ordered]
    if any(r is None for r in records):
        return None
    return records


def write_manifest(out_dir: Path, records: list[dict]) -> None:
    """manifest.jsonl and manifest.parquet, each replaced atomically."""
    lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    write_atomic(out_dir / MANIFEST_JSONL, lines.encode("utf-8"))
    write_atomic(out_dir / MANIFEST_PARQUET, _parquet_bytes(records))


def _parquet_bytes(records: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # JSON round trip: one value type per field (e.g. dates as text), as in manifest.jsonl.
    plain = [json.loads(json.dumps(r, default=str)) for r in records]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(plain), sink)
    return sink.getvalue().to_pybytes()


def read_manifest(out_dir: Path) -> list[dict]:
    path = out_dir / MANIFEST_JSONL
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
