"""How users name LoRAs: `PATH_OR_HUB_ID[:WEIGHT]` (flag `--lora`) and `path:weight; path:weight` (column
`loras`). Plain text handling, no model code: the command line and table checks import it cheaply."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_SEPARATORS = re.compile(r"[;\n]")


class LoraSpecError(ValueError):
    """A LoRA reference that cannot be read; the message quotes it and shows the expected form."""


@dataclass(frozen=True)
class LoraRef:
    """One LoRA as the user wrote it: where it is and how strongly it applies."""

    source: str  # local .safetensors path (or folder), `owner/name`, or `owner/name/file.safetensors`
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> LoraRef:
        """`PATH_OR_HUB_ID[:WEIGHT]`, weight 1.0 when absent.

        Only a trailing `:NUMBER` is read as the weight, so Windows paths work with or without one
        (`C:\\loras\\x.safetensors`, `C:\\loras\\x.safetensors:0.8`); hub ids never contain ':'. A file
        whose own name ends in `:NUMBER` (say `v:2`) needs its weight written out: `v:2:1`.
        """
        text = spec.strip()
        head, sep, tail = text.rpartition(":")
        if sep and _NUMBER.fullmatch(tail.strip()):
            source, weight = head.strip(), float(tail)
        else:
            source, weight = text, 1.0
        if not source:
            raise LoraSpecError(
                f"LoRA {spec!r}: no file or hub id; write PATH_OR_HUB_ID[:WEIGHT], e.g. x.safetensors:0.8"
            )
        if not math.isfinite(weight):
            raise LoraSpecError(f"LoRA {spec!r}: the weight is not a finite number")
        return cls(source, weight)

    def __str__(self) -> str:
        return f"{self.source}:{self.weight:g}"


def parse_lora_list(text: str | None) -> tuple[LoraRef, ...]:
    """A `loras` cell: `path:weight; path:weight` (or one per line); blank parts and empty cells mean none."""
    return tuple(LoraRef.parse(part) for part in _SEPARATORS.split(text or "") if part.strip())
