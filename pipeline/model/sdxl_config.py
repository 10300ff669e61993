"""The SDXL base configuration shipped with the package (sdxl_base_config/README.md says where it comes from).

diffusers needs a configuration folder to build a pipeline from a single-file checkpoint; without one it
would download it. The JSON files ship as package data; the tokenizers' `vocab.json` and `merges.txt` are
written from the CLIP merges on first use, into the cache folder, and reused after that.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from ..common.fingerprint import cache_dir

PACKAGE_FOLDER = "sdxl_base_config"
MERGES_FILE = "clip_merges.txt.gz"
TOKENIZERS = ("tokenizer", "tokenizer_2")
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
CONFIG_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "text_encoder_2/config.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json",
                "tokenizer/special_tokens_map.json", "tokenizer_2/tokenizer_config.json",
                "tokenizer_2/special_tokens_map.json")  # fmt: skip


def shipped_config_dir() -> Path:
    """A complete diffusers SDXL configuration folder (no weights); written once per package version."""
    source = Path(str(resources.files("pipeline.model") / PACKAGE_FOLDER))
    target = cache_dir() / f"sdxl-base-config-{_content_hash(source)}"
    if (target / "model_index.json").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return _materialize(source, target)
    except OSError:  # a read-only cache: a private copy for this process
        return _materialize(source, Path(tempfile.mkdtemp(prefix="sdxl-base-config-")) / "config")


def _materialize(source: Path, target: Path) -> Path:
    """Built beside `target` and renamed into place, so concurrent processes never see half a folder."""
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        for name in CONFIG_FILES:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, staging / name)
        merges = gzip.decompress((source / MERGES_FILE).read_bytes()).decode("utf-8")
        for folder in TOKENIZERS:
            write_clip_vocabulary(staging / folder, merges)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise  # not the harmless race where another process finished first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_clip_vocabulary(folder: Path, merges: str) -> None:
    """`merges.txt` and the `vocab.json` CLIP derives from it (byte symbols, with `</w>`, merges, specials)."""
    pairs = [line for line in merges.splitlines()[1:] if line]
    symbols = clip_byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in (p.split(" ") for p in pairs)]
    vocab = {token: index for index, token in enumerate([*tokens, *SPECIAL_TOKENS])}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")


def _content_hash(source: Path) -> str:
    digest = hashlib.sha256()
    for name in (*CONFIG_FILES, MERGES_FILE):
        digest.update(name.encode() + b"\0" + (source / name).read_bytes())
    return digest.hexdigest()[:12]


def clip_byte_symbols() -> list[str]:
    # GPT-2/CLIP's reversible byte -> printable-character table.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + n) for n in range(len(others))]
