"""Content hashes of weight files, cached by (path, size, mtime) so a start does not re-read gigabytes.

Weights are identified by what they contain, not where they live: a moved model folder, a copied
checkpoint or the same file in the Hugging Face cache all give the same identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

CACHE_ENV = "LAYERDIFFUSE_CACHE"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 22


def cache_dir() -> Path:
    """`$LAYERDIFFUSE_CACHE`, else `$XDG_CACHE_HOME/layerdiffuse` (default ~/.cache/layerdiffuse)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layerdiffuse"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes; read once per (real path, size, mtime), then from the cache."""
    real = Path(path).resolve()
    if real.parent.name == "blobs" and _HEX64.fullmatch(real.name):
        return real.name  # a Hugging Face cache blob of a large file is named by its SHA-256
    stat = real.stat()
    key = f"{real}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = _read_cache()
    if key not in cache:
        cache = {**_read_cache(), key: _hash(real)}
        _write_cache(cache)
    return cache[key]


WEIGHT_SUFFIXES = (".safetensors", ".bin")
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs, tokenizer vocabularies, sentencepiece models


def sha256_folder(folder: str | os.PathLike, variant: str | None = None) -> str:
    """One hash over a model folder's configs and the weight files a load would read (`variant` picks
    `*.fp16.safetensors`-style files; files of other variants are left out, they change nothing)."""
    folder = Path(folder)
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and _loaded(p, variant)):
        relative = path.relative_to(folder).as_posix()
        if not any(part.startswith(".") for part in relative.split("/")):
            lines.append(f"{relative} {sha256_file(path)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _loaded(path: Path, variant: str | None) -> bool:
    if path.name.endswith(CONFIG_SUFFIXES):
        return True
    if not path.name.endswith(WEIGHT_SUFFIXES):
        return False
    parts = path.name.split(".")
    infix = parts[-2] if len(parts) > 2 else None
    return infix == variant


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_file() -> Path:
    return cache_dir() / "sha256.json"


def _read_cache() -> dict[str, str]:
    try:
        return json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict[str, str]) -> None:
    """Best effort and atomic: concurrent writers each leave a whole file; a lost entry is re-hashed."""
    folder = _cache_file().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(cache, handle)
        os.replace(tmp, _cache_file())
    except OSError:
        pass  # a read-only home only costs re-hashing next time
