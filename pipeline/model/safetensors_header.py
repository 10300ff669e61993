"""What a .safetensors file holds, read from its header alone (no tensor data is read).

The format: 8 bytes little-endian header length N, N bytes of JSON naming every tensor's dtype, shape
and byte range in the data that follows. A file whose data is shorter than the header promises was cut
short (an interrupted download); a file whose first bytes do not parse is not safetensors at all.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library refuses larger headers too


class HeaderError(ValueError):
    """The file is not a readable safetensors file; the message says what is wrong with it."""


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SafetensorsHeader:
    path: str
    tensors: dict[str, Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    data_offset: int = 0  # where the tensor bytes start (8 + header length)

    def shape(self, key: str) -> tuple[int, ...] | None:
        tensor = self.tensors.get(key)
        return tensor.shape if tensor else None


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and check the header; `HeaderError` says why a file is unreadable, truncated or not safetensors."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise HeaderError(f"{path}: {size} bytes, too short to be a safetensors file (empty or cut short)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise HeaderError(_not_safetensors(path))
        if length > size - 8:
            raise HeaderError(f"{path}: truncated inside its header ({size} bytes); download it again")
        raw = handle.read(length)
    try:
        entries = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HeaderError(f"{path}: header is not valid JSON ({exc}); the file is damaged or not safetensors") from exc
    if not isinstance(entries, dict):
        raise HeaderError(f"{path}: header is not a JSON object; the file is damaged or not safetensors")
    metadata = entries.pop("__metadata__", None) or {}
    tensors, end = _tensors(path, entries)
    available = size - 8 - length
    if end > available:
        raise HeaderError(
            f"{path}: truncated: the header promises {end + 8 + length} bytes, the file has {size} "
            "(an interrupted download or copy); download it again"
        )
    return SafetensorsHeader(str(path), tensors, dict(metadata), 8 + length)


def _tensors(path: Path, entries: dict) -> tuple[dict[str, Tensor], int]:
    tensors: dict[str, Tensor] = {}
    end = 0
    for name, entry in entries.items():
        try:
            dtype, shape, (begin, stop) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (TypeError, KeyError, ValueError) as exc:
            raise HeaderError(f"{path}: header entry {name!r} is malformed; the file is damaged") from exc
        if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop):
            raise HeaderError(f"{path}: header entry {name!r} has bad data offsets; the file is damaged")
        tensors[name] = Tensor(str(dtype), tuple(int(d) for d in shape))
        end = max(end, stop)
    return tensors, end


def _not_safetensors(path: Path) -> str:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic == b"PK\x03\x04":
        kind = "a zip archive (a pickled PyTorch .ckpt/.pt/.bin: it can run code when loaded, so it is refused)"
    elif magic == b"GGUF":
        kind = "a GGUF file (quantized weights for other runtimes)"
    elif magic[:1] == b"\x80":
        kind = "a pickle (a PyTorch .ckpt/.pt/.bin: it can run code when loaded, so it is refused)"
    else:
        kind = "not a safetensors file (its first bytes are no safetensors header)"
    return f"{path}: {kind}; convert it to .safetensors or download the .safetensors version"
