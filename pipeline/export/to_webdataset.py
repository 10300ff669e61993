"""WebDataset tar shards: per sample `<key>.png` (the PNG as generated) and `<key>.json` (its manifest record)."""

from __future__ import annotations

import json
import string
from collections.abc import Iterable

from ..common.storage import Storage
from ..folder.schema import json_record
from .shards import OutputFile, in_shards, shard_name
from .source import Sample

KEY_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_-")


def sample_key(row_id: str) -> str:
    """A `__key__` without dots, unique per id.

    WebDataset splits a member name at the first dot of its base name (`hero.v2.png` would be key `hero`
    with the extension `v2.png`), so every character other than letters, digits, `_` and `-` is written
    as `%XX` (its UTF-8 bytes, as in URLs): `hero.v2` -> `hero%2Ev2`. `urllib.parse.unquote` gives the id
    back; the JSON carries it too.
    """
    return "".join(c if c in KEY_CHARACTERS else "".join(f"%{b:02X}" for b in c.encode()) for c in row_id)


def tar_entry(sample: Sample) -> dict:
    record = json.dumps(json_record(dict(sample.record)), ensure_ascii=False, default=str).encode("utf-8")
    return {"__key__": sample_key(sample.key), "png": sample.png, "json": record}


def write_webdataset(samples: Iterable[Sample], dest: Storage, shard_size: int, schema=None) -> list[OutputFile]:
    """DEST/data-000000.tar, ... with `shard_size` samples each (the last one fewer)."""
    from webdataset import TarWriter

    files = []
    for index, group in enumerate(in_shards(samples, shard_size)):
        name = shard_name(index, ".tar")
        with dest.open_atomic(name) as stream:
            rows = 0
            # encoder=False: the PNG bytes go in unchanged; mtime=0: the same samples give the same bytes.
            with TarWriter(stream, encoder=False, mtime=0) as tar:
                for sample in group:
                    tar.write(tar_entry(sample))
                    rows += 1
            size = stream.tell()
        files.append(OutputFile(name, rows, size))
    return files
