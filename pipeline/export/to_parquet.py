"""Parquet shards: the manifest columns plus `image` as {bytes, path}, the layout `datasets` reads as `Image`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from ..common.storage import Storage
from .shards import OutputFile, in_shards, shard_name
from .source import Sample

ROW_GROUP_ROWS = 100  # as `datasets` writes image datasets: small row groups, bounded memory for readers
ROW_GROUP_BYTES = 64 << 20  # and no more image bytes than this per row group (1024x1024 PNGs are ~1-4 MB)
# Only the image column's feature is declared: `datasets` takes every other column's type from Arrow,
# which keeps the files readable by any version that knows `Image`.
HF_FEATURES = {"info": {"features": {"image": {"_type": "Image"}}}}


def export_schema(manifest_schema):
    """`image: struct<bytes: binary, path: string>` first, then the manifest's columns (its `image` record
    is left out: the file name is `image.path`, the size the `width`/`height` columns)."""
    import pyarrow as pa

    image = pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    fields = [image, *(field for field in manifest_schema if field.name != "image")]
    return pa.schema(fields, metadata={"huggingface": json.dumps(HF_FEATURES)})


def write_parquet(samples: Iterable[Sample], dest: Storage, shard_size: int, schema) -> list[OutputFile]:
    """DEST/data-000000.parquet, ... with `shard_size` rows each, in small row groups (`row_groups`)."""
    out_schema = export_schema(schema)
    files = []
    for index, group in enumerate(in_shards(samples, shard_size)):
        name = shard_name(index, ".parquet")
        with dest.open_atomic(name) as stream:
            rows = _write_shard(group, stream, out_schema)
            size = stream.tell()
        files.append(OutputFile(name, rows, size))
    return files


def _write_shard(group: Iterator[Sample], stream, schema) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    # PNG bytes are unique and already compressed: dictionary-encoding them is wasted work (other columns keep it)
    dictionary = [path for path in _leaf_paths(schema) if path != "image.bytes"]
    with pq.ParquetWriter(stream, schema, use_dictionary=dictionary) as writer:
        for chunk in row_groups(group):
            writer.write_batch(pa.RecordBatch.from_pylist([_row(sample) for sample in chunk], schema=schema))
            rows += len(chunk)
    return rows


def _leaf_paths(fields, prefix: str = "") -> Iterator[str]:
    """Parquet column paths (`image.bytes`) of struct leaves; a list column's own name stands for it."""
    import pyarrow as pa

    for field in fields:
        if pa.types.is_struct(field.type):
            yield from _leaf_paths(field.type, f"{prefix}{field.name}.")
        else:
            yield prefix + field.name


def row_groups(samples: Iterable[Sample]) -> Iterator[list[Sample]]:
    """Consecutive lists of at most ROW_GROUP_ROWS samples and (past the first) ROW_GROUP_BYTES of images."""
    chunk, size = [], 0
    for sample in samples:
        if chunk and (len(chunk) == ROW_GROUP_ROWS or size + len(sample.png) > ROW_GROUP_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(sample)
        size += len(sample.png)
    if chunk:
        yield chunk


def _row(sample: Sample) -> dict:
    return {**sample.record, "image": {"bytes": sample.png, "path": sample.file_name}}
