"""Names that become file names (row ids, expanded keys, atlas names): one pattern, safe on every filesystem
and in URLs: a letter or digit first, then letters, digits, `.`, `_`, `-`; at most 128 characters."""

from __future__ import annotations

import re

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
