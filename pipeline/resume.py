"""Which rows are already done, so that reruns skip them and redo only what is missing or changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .identity import Identity
from .records import Batch, Status


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def is_done(out_dir: Path, record: dict | None, expected_request: str | None = None) -> bool:
    """An ok record whose PNG is on disk with the recorded hash (and, if given, for the same request)."""
    if not record or record.get("status") != Status.OK.value:
        return False
    if expected_request is not None and record.get("request_hash") != expected_request:
        return False
    return file_sha256(out_dir / record["image"]["url"]) == record.get("sha256")


def rows_to_do(out_dir: Path, batches: list[Batch], latest: dict[str, dict], identity: Identity) -> set[str]:
    """Keys of the rows that need an image."""
    return {
        row.key
        for batch in batches
        for row in batch.rows
        if not is_done(out_dir, latest.get(row.key), identity.request_hash(row))
    }
