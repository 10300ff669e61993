"""Checks of the unattended settings (webhook and ping URLs, metric labels), wherever they are given: flags,
the config file, or the reporting code itself."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def check_url(url: str, what: str) -> str:
    """`url` if it is an http(s) URL with a host, else ValueError naming `what` (e.g. "--notify").

    The message never repeats the URL's path or query, which may hold a token.
    """
    problem = _url_problem(url)
    if problem:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host name ({problem})")
    return url


def _url_problem(url: str) -> str | None:
    if not url:
        return "it is empty"
    if any(ch <= " " or ch == "\x7f" for ch in url):
        return "it contains spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError:
        return "it cannot be parsed, or its port is not a number"
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme!r}" if parts.scheme else "it has no scheme"
    if not parts.hostname:
        return "it has no host"
    return None


def check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """The labels as strings; ValueError for names Prometheus refuses (or `outcome`, used by the rows metric)."""
    labels = {str(k): str(v) for k, v in (labels or {}).items()}
    bad = [k for k in labels if not LABEL_NAME.fullmatch(k) or k.startswith("__") or k == "outcome"]
    if bad:
        raise ValueError(f"metric label names must match [a-zA-Z_][a-zA-Z0-9_]* and not be 'outcome': {bad}")
    return labels
