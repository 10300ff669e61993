"""Reading a finished output folder of `generate` (a local path or an fsspec URL), one record and one PNG at a time."""

from __future__ import annotations

import hashlib
import posixpath
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..common.exits import ExitCode
from ..common.storage import StorageError, display, locate, scrub, storage_failure
from ..folder.layout import IMAGES, MANIFEST_PARQUET
from ..folder.schema import Status
from .errors import ExportError

BATCH_ROWS = 1024  # manifest rows decoded at a time
READ_AHEAD = 8  # PNGs fetched concurrently: hides object-store latency, keeps memory at a few images
PARQUET_BUFFER = 1 << 20  # with pre_buffer off: column chunks are read page by page, not a row group at once
REDO = "run the same `layerdiffuse generate` command again on this folder: it redoes missing or damaged images"


@dataclass(frozen=True)
class Sample:
    """One row to export: its manifest record and the bytes of its PNG file."""

    key: str  # the row id
    file_name: str  # the PNG's file name, e.g. `hero.v2.png`
    record: dict[str, Any]
    png: bytes


@dataclass(frozen=True)
class Source:
    shown: str  # the folder as messages name it (no credentials)
    fs: Any  # fsspec.AbstractFileSystem
    root: str
    schema: Any  # pyarrow.Schema of the manifest

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)


def open_source(url: str) -> Source:
    """The output folder at `url`, with its manifest's schema; a clear error when it is not one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        fs, root = locate(url)
    except StorageError as exc:
        raise ExportError(f"DIR {exc}") from None
    root = root.rstrip("/") or root
    try:
        with fs.open(posixpath.join(root, MANIFEST_PARQUET), "rb") as handle:
            schema = pq.read_schema(handle)
    except FileNotFoundError:
        shown = display(url)
        message = f"{shown}: no {MANIFEST_PARQUET}, so not a finished output folder of `layerdiffuse generate`"
        raise ExportError(f"{message} (finish the run, or assemble it: `layerdiffuse merge {shown}`)") from None
    except pa.ArrowInvalid as exc:  # a bad footer: the manifest is derived, a merge writes it again
        shown = display(url)
        raise ExportError(
            f"{shown}: {MANIFEST_PARQUET} is damaged ({exc}); rebuild it: `layerdiffuse merge {shown}`"
        ) from None
    except Exception as exc:  # storage errors (exit 6); else the backend's own: one line, no secrets
        raise _read_error(exc, f"{display(url)}: cannot read {MANIFEST_PARQUET}") from None
    return Source(display(url), fs, root, schema)


def manifest_records(source: Source) -> Iterator[dict]:
    """Every manifest record in order, decoded BATCH_ROWS at a time."""
    import pyarrow.parquet as pq

    with source.fs.open(source.path(MANIFEST_PARQUET), "rb") as handle:
        manifest = pq.ParquetFile(handle, buffer_size=PARQUET_BUFFER, pre_buffer=False)
        for batch in manifest.iter_batches(batch_size=BATCH_ROWS):
            yield from batch.to_pylist()


def selected(records: Iterable[dict], include_flagged: bool, skipped: Counter) -> Iterator[dict]:
    """Rows that have an image to export; the others are counted in `skipped` by reason."""
    for record in records:
        reason = skip_reason(record, include_flagged)
        if reason is None:
            yield record
        else:
            skipped[reason] += 1


def skip_reason(record: dict, include_flagged: bool) -> str | None:
    """`failed` / `invalid` rows have no image; flagged rows have only a transparent placeholder."""
    if record.get("status") != Status.OK.value:
        return str(record.get("status") or "no status")
    if record.get("has_nsfw_concepts") and not include_flagged:
        return "flagged"
    return None


def samples(source: Source, records: Iterable[dict]) -> Iterator[Sample]:
    """The records with their PNG bytes, in order; READ_AHEAD files are in flight at most."""
    with ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="export-read") as pool:
        pending: deque = deque()
        for record in records:
            pending.append(pool.submit(read_sample, source, record))
            if len(pending) >= READ_AHEAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def read_sample(source: Source, record: dict) -> Sample:
    """The PNG as written by `generate`, checked against the sha256 in its record."""
    name = image_path(record)
    where = f"{source.shown}: {name} (manifest row {record.get('row')}, id {record.get('id')})"
    try:
        data = source.fs.cat_file(source.path(name))
    except FileNotFoundError:
        raise ExportError(f"{where} is missing; {REDO}") from None
    except Exception as exc:
        raise _read_error(exc, f"{where} cannot be read") from None
    expected = record.get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise ExportError(f"{where} does not match the sha256 in the manifest (changed or damaged); {REDO}")
    return Sample(key=str(record["id"]), file_name=posixpath.basename(name), record=record, png=data)


def _read_error(exc: Exception, what: str) -> ExportError:
    """A storage error while reading DIR: exit 6 (retry later); anything else: DIR is not usable (exit 2)."""
    failure = storage_failure(exc, what)
    if failure is not None:
        return ExportError(str(failure), ExitCode.OUTPUT)
    return ExportError(scrub(f"{what}: {type(exc).__name__}: {exc}"))


def image_path(record: dict) -> str:
    """The PNG's path relative to the output folder, as the record's `image.url` gives it."""
    url = (record.get("image") or {}).get("url") or f"{IMAGES}/{record['id']}.png"
    path = posixpath.normpath(url)
    if "://" in url or path.startswith(("/", "..")):
        raise ExportError(f"manifest row {record.get('row')} (id {record.get('id')}): image url {url!r} "
                          "is not a path inside the output folder")  # fmt: skip
    return path
