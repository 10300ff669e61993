"""What an export writes, and the lazy grouping of samples into shards (memory stays at one sample)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
PREFIX = "data"  # shard names: data-000000.tar, data-000000.parquet


@dataclass(frozen=True)
class OutputFile:
    """One shard: a file (webdataset, parquet) or a subfolder of images (imagefolder)."""

    name: str  # relative to DEST
    rows: int
    bytes: int


def in_shards(items: Iterable[T], size: int) -> Iterator[Iterator[T]]:
    """Consecutive groups of at most `size` items, without holding a group in memory.

    Each group must be consumed before the next is requested (the writers do so).
    """
    items = iter(items)
    for first in items:
        yield itertools.chain([first], itertools.islice(items, size - 1))


def shard_name(index: int, suffix: str) -> str:
    return f"{PREFIX}-{index:06d}{suffix}"
