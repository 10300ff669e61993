"""Parquet shards: the manifest columns plus `image` as {bytes, path}, the layout `datasets` reads as `Image`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from .destination import Destination, new_file
from .shards import OutputFile, in_lists, in_shards, shard_name
from .source import Sample

ROW_GROUP_ROWS = 100  # as `datasets` writes image datasets: small row groups, bounded memory for readers
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


def write_parquet(samples: Iterable[Sample], dest: Destination, shard_size: int, schema) -> list[OutputFile]:
    """DEST/data-000000.parquet, ... with `shard_size` rows each, in row groups of ROW_GROUP_ROWS."""
    out_schema = export_schema(schema)
    files = []
    for index, group in enumerate(in_shards(samples, shard_size)):
        name = shard_name(index, ".parquet")
        with new_file(dest, name) as stream:
            rows = _write_shard(group, stream, out_schema)
            size = stream.tell()
        files.append(OutputFile(name, rows, size))
    return files


def _write_shard(group: Iterator[Sample], stream, schema) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    with pq.ParquetWriter(stream, schema) as writer:
        for chunk in in_lists(group, ROW_GROUP_ROWS):
            writer.write_batch(pa.RecordBatch.from_pylist([_row(sample) for sample in chunk], schema=schema))
            rows += len(chunk)
    return rows


def _row(sample: Sample) -> dict:
    return {**sample.record, "image": {"bytes": sample.png, "path": sample.file_name}}
