"""Which weights made an image, written the way AUTOMATIC1111 writes it, so galleries and Civitai-style tools
recognise the checkpoint, VAE and LoRAs; and the identity records for the manifest.

AUTOMATIC1111's conventions (its `parameters` PNG text):
- `Model hash`: the first 10 hex digits of the checkpoint file's SHA-256 ("AutoV2"); `Model`: file stem.
- `VAE hash` / `VAE`: the same for a VAE file.
- `Lora hashes: "name: hash, name: hash"`: per LoRA, the first 12 hex digits of the SHA-256 of the file's
  tensor data, i.e. the bytes after the safetensors header ("AutoV3", the additional-networks hash), so
  editing the metadata does not change it. The value holds ':' and ',' and is written as a JSON string.
- weights appear in the prompt as `<lora:name:weight>` tags (this tool keeps them out of the prompt and
  lists them in the parameters text instead).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..common.fingerprint import sha256_file
from .lora_files import ResolvedLora
from .safetensors_header import read_header

_CHUNK = 1 << 22


def a1111_model_hash(path: str | os.PathLike) -> str:
    """`Model hash` / `VAE hash` as AUTOMATIC1111 writes them: SHA-256 of the whole file, 10 hex digits."""
    return sha256_file(path)[:10]


def a1111_lora_hash(path: str | os.PathLike) -> str:
    """A LoRA's short hash in `Lora hashes`: SHA-256 of the tensor data (after the header), 12 hex digits."""
    real = Path(path).resolve()
    stat = real.stat()
    return _tensor_data_sha256(str(real), stat.st_size, stat.st_mtime_ns)[:12]


@functools.lru_cache(maxsize=256)
def _tensor_data_sha256(path: str, size: int, mtime_ns: int) -> str:  # size, mtime: the cache key
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(read_header(path).data_offset)
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def lora_hashes_text(loras: Sequence[ResolvedLora]) -> str:
    """`name: hash, name: hash` (unquoted; `a1111_fields` quotes it)."""
    return ", ".join(f"{_clean(lora.name)}: {a1111_lora_hash(lora.path)}" for lora in loras)


def lora_prompt_tags(loras: Sequence[ResolvedLora]) -> str:
    """`<lora:name:weight> …`: how AUTOMATIC1111 prompts name LoRAs and their weights."""
    return " ".join(f"<lora:{_clean(lora.name)}:{lora.weight:g}>" for lora in loras)


def a1111_fields(
    model_file: str | None = None, vae_file: str | None = None, loras: Sequence[ResolvedLora] = ()
) -> list[tuple[str, str]]:
    """(name, value) pairs for the `parameters` line, in AUTOMATIC1111's order, values quoted as it quotes
    them. Files only: a diffusers folder or hub id has no A1111 hash (give its name as `Model` yourself)."""
    fields: list[tuple[str, str]] = []
    if model_file:
        fields += [("Model hash", a1111_model_hash(model_file)), ("Model", _quote(Path(model_file).stem))]
    if vae_file:
        fields += [("VAE hash", a1111_model_hash(vae_file)), ("VAE", _quote(Path(vae_file).name))]
    if loras:
        fields.append(("Lora hashes", _quote(lora_hashes_text(loras))))
    return fields


def format_fields(fields: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{name}: {value}" for name, value in fields)


def weights_identity(spec: str) -> dict:
    """Content identity of a weight source: a file's sha256, or each weight file of a folder (hub ids resolve
    to their cached snapshot). Moving or renaming weights keeps the identity; changing a byte changes it."""
    path = Path(spec).expanduser()
    if path.is_file():
        return {"file": path.name, "sha256": sha256_file(path)}
    folder = path if path.is_dir() else _cached_snapshot(spec)
    if folder is None:
        return {"source": spec}  # not available here; loading will say so
    files = sorted(p for p in folder.rglob("*.safetensors") if p.is_file())
    return {"files": {str(p.relative_to(folder)): sha256_file(p) for p in files}}


def model_identity(base: str, base_config: str | None = None) -> dict:
    """The base model for the manifest: source, content hashes, and A1111's `Model hash` for a single file."""
    identity = {"source": base, **weights_identity(base)}
    if "sha256" in identity:
        identity["model_hash"] = identity["sha256"][:10]
        identity["base_config"] = base_config or "shipped SDXL base configuration"
    return identity


def vae_identity(spec: str | None) -> dict | None:
    if spec is None:
        return None
    identity = {"source": spec, **weights_identity(spec)}
    if "sha256" in identity:
        identity["vae_hash"] = identity["sha256"][:10]
    return identity


def lora_record(lora: ResolvedLora) -> dict:
    """One LoRA in the manifest: what the user wrote, the file, its content and A1111 hashes, the weight."""
    return {
        "name": lora.name,
        "source": lora.ref.source,
        "path": lora.path,
        "weight": lora.weight,
        "sha256": lora.sha256,
        "a1111_hash": a1111_lora_hash(lora.path),
        "format": lora.info.format,
    }


def _cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*/*.safetensors"], local_files_only=True))
    except Exception:  # not cached
        return None


def _quote(text: str) -> str:
    """AUTOMATIC1111's rule: values holding ',', ':' or a newline are written as JSON strings."""
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _clean(name: str) -> str:
    """Names inside `Lora hashes` and `<lora:…>` lose the characters that would break those lists."""
    return name.translate(str.maketrans("", "", ":,<>"))
