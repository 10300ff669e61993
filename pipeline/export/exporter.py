"""`export`: a finished output folder -> WebDataset shards, a Hugging Face imagefolder, or Parquet shards."""

from __future__ import annotations

import importlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from ..common.clock import utc_now
from ..common.exits import ExitCode
from ..common.storage import Storage, display, storage_failure
from .destination import open_destination
from .errors import ExportError
from .shards import OutputFile
from .source import manifest_records, open_source, samples, selected

# format -> (module, writer); imported only when used (webdataset, pyarrow)
FORMATS = {
    "webdataset": ("to_webdataset", "write_webdataset"),
    "imagefolder": ("to_imagefolder", "write_imagefolder"),
    "parquet": ("to_parquet", "write_parquet"),
}
DEFAULT_SHARD_SIZE = 1000
INDEX = "export.json"  # written last: an export without it is incomplete


@dataclass(frozen=True)
class ExportSummary:
    format: str
    source: str
    dest: str
    rows: int  # samples exported
    skipped: dict[str, int]  # rows left out, by reason: flagged, failed, invalid
    files: tuple[OutputFile, ...]
    shard_size: int
    include_flagged: bool


def export(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    fmt: str,
    shard_size: int = DEFAULT_SHARD_SIZE,
    include_flagged: bool = False,
    overwrite: bool = False,
) -> ExportSummary:
    """Export the rows of `source` that have an image to `dest` in `fmt`; DEST/export.json is written last.

    Streams: manifest rows are decoded in batches and PNGs read a few at a time, so memory does not grow
    with the number of rows. Raises ExportError (with its exit code) on anything the user can fix.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: unknown; use one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise ExportError(f"--shard-size {shard_size}: must be at least 1")
    module, function = FORMATS[fmt]
    write = getattr(importlib.import_module(f".{module}", __package__), function)
    origin = open_source(str(source))
    out = open_destination(str(dest), overwrite)
    skipped: Counter = Counter()
    exported: Counter = Counter()
    rows = _counted(selected(manifest_records(origin), include_flagged, skipped), exported)
    with _storage_errors(out):
        files = write(samples(origin, rows), out, shard_size, origin.schema)
    summary = ExportSummary(fmt, display(str(source)), display(str(dest)), exported["rows"], dict(skipped),
                            tuple(files), shard_size, include_flagged)  # fmt: skip
    write_index(out, summary)
    return summary


def _counted(rows: Iterable[dict], tally: Counter) -> Iterator[dict]:
    for row in rows:
        tally["rows"] += 1
        yield row


def write_index(out: Storage, summary: ExportSummary) -> None:
    from .. import __version__

    index = {**asdict(summary), "created_at": utc_now(), "layerdiffuse_batch": __version__}
    with _storage_errors(out):
        out.write(INDEX, (json.dumps(index, indent=1) + "\n").encode("utf-8"))


@contextmanager
def _storage_errors(out: Storage):
    """Storage errors while writing DEST (or reading DIR's manifest): exit 6, one line."""
    try:
        yield
    except ExportError:
        raise
    except Exception as exc:
        failure = storage_failure(exc, str(out))
        if failure is None:
            raise
        raise ExportError(str(failure), ExitCode.OUTPUT) from None
