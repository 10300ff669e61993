"""Which rows are done, so that reruns skip them and redo only what is missing or changed.

A row is done when its latest record is `ok`, for the same request, and its image exists with the recorded
size: one stat per image locally, one listing per image folder on object stores; no image byte is read.
`verify` also re-hashes the images (in parallel) and counts a file whose content changed as not done.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ..common.storage import Storage
from ..folder.schema import Status


@dataclass(frozen=True)
class Decision:
    done: list[bool]  # per row asked about
    urls: list[str | None]  # each row's recorded image, where a redo writes again (None: a new row)
    damaged: list[str]  # keys whose image exists but whose content changed (verify only)


def decide(storage: Storage, keys: list[str], state: pa.Table, hashes: list[str] | None = None,
           verify: bool = False) -> Decision:  # fmt: skip
    """`state`: the folder's latest records (manifest.folder_state); `hashes`: each row's request hash now
    (None: any request counts, as `status` sees it)."""
    records = state.take(pc.index_in(pa.array(keys, pa.string()), state.column("id")))
    ok = pc.fill_null(pc.equal(records.column("status"), Status.OK.value), False)
    if hashes is not None:
        ok = pc.and_(ok, pc.fill_null(pc.equal(records.column("request_hash"), pa.array(hashes, pa.string())), False))
    urls = pc.struct_field(records.column("image"), "url").to_pylist()
    sizes = pc.struct_field(records.column("image"), "file_size").to_pylist()
    done = _present(storage, ok.to_pylist(), urls, sizes)
    damaged = []
    if verify:
        digests = records.column("sha256").to_pylist()
        done, damaged = _verified(storage, keys, done, urls, digests)
    return Decision(done, urls, damaged)


def _present(storage: Storage, ok: list[bool], urls: list, sizes: list) -> list[bool]:
    """Whether each ok row's image is there with its recorded size: locally one stat per image (a shard pays
    for its own rows only), on object stores one listing per folder (one request per thousand images)."""
    if storage.is_local:
        return [bool(good and url is not None and storage.size(url) == size)
                for good, url, size in zip(ok, urls, sizes, strict=True)]  # fmt: skip
    listings: dict[str, dict[str, int]] = {}
    present = []
    for good, url, size in zip(ok, urls, sizes, strict=True):
        if not good or url is None:
            present.append(False)
            continue
        folder, _, name = url.rpartition("/")
        if folder not in listings:
            listings[folder] = storage.sizes(folder)
        present.append(listings[folder].get(name) == size)
    return present


def _verified(storage: Storage, keys, done: list[bool], urls, digests) -> tuple[list[bool], list[str]]:
    def matches(i: int) -> bool:
        try:
            return hashlib.sha256(storage.read_bytes(urls[i])).hexdigest() == digests[i]
        except OSError:
            return False

    todo = [i for i, d in enumerate(done) if d]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        results = dict(zip(todo, pool.map(matches, todo), strict=True))
    damaged = [keys[i] for i, good in results.items() if not good]
    return [d and results.get(i, False) for i, d in enumerate(done)], damaged
