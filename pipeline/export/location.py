"""Local paths and fsspec URLs (s3://, gs://, hf://, memory://, ...) to a filesystem and a path on it."""

from __future__ import annotations

from typing import Any

from .errors import ExportError


def resolve(url: str, role: str) -> tuple[Any, str]:
    """(filesystem, path); credentials come from each backend's usual environment and config files."""
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(str(url))
    except ImportError as exc:  # e.g. s3fs or gcsfs not installed
        raise ExportError(f"{role} {url}: {exc}") from None
    except ValueError as exc:  # unknown protocol, malformed URL
        raise ExportError(f"{role} {url}: not a local path or a known fsspec URL ({exc})") from None
    return fs, path.rstrip("/") or path


def is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)
