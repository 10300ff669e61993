"""A Hugging Face `imagefolder`: images in subfolders of at most `shard_size` files, `metadata.jsonl` at the top."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from ..common.storage import Storage
from .shards import OutputFile, in_shards
from .source import Sample

METADATA = "metadata.jsonl"
# `image`: the file itself is the image column; `error`, `input`: set only on rows that are never exported.
DROPPED = frozenset({"image", "error", "input"})
# `datasets` turns string columns with these names into image columns: other columns must not end so.
IMAGE_COLUMN_SUFFIXES = ("file_name", "file_names")


def write_imagefolder(samples: Iterable[Sample], dest: Storage, shard_size: int, schema=None) -> list[OutputFile]:
    """DEST/000000/<id>.png, ...; DEST/metadata.jsonl is published once every image is in place."""
    files = []
    with dest.open_atomic(METADATA) as metadata:
        for index, group in enumerate(in_shards(samples, shard_size)):
            files.append(_write_folder(group, f"{index:06d}", dest, metadata))
        dest.sync()  # images were written without a fsync each; make them durable before the metadata
        size = metadata.tell()
    return [*files, OutputFile(METADATA, sum(f.rows for f in files), size)]


def _write_folder(group: Iterator[Sample], folder: str, dest: Storage, metadata) -> OutputFile:
    rows = size = 0
    for sample in group:
        file_name = f"{folder}/{sample.file_name}"
        dest.write(file_name, sample.png, durable=False)
        line = json.dumps(metadata_row(sample.record, file_name), ensure_ascii=False, default=str)
        metadata.write(line.encode("utf-8") + b"\n")
        rows, size = rows + 1, size + len(sample.png)
    return OutputFile(f"{folder}/", rows, size)


def metadata_row(record: dict, file_name: str) -> dict[str, Any]:
    """`file_name`, `text` (the prompt, the caption column of HF text-to-image scripts), then the record's
    fields with nested ones flattened (`model.base` -> `model_base`); the first of two equal names wins."""
    row: dict[str, Any] = {"file_name": file_name, "text": record.get("prompt")}
    for name, value in record.items():
        if name not in DROPPED:
            _flatten(row, name, value)
    return row


def _flatten(row: dict, name: str, value: Any) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(row, f"{name}_{key}", inner)
        return
    if name.endswith(IMAGE_COLUMN_SUFFIXES):
        name += "_"  # e.g. a passthrough `source_file_name` would otherwise be loaded as an image
    row.setdefault(name, value)
