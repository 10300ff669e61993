"""Random-weight models written in the real on-disk formats: the embedded tiny model (demo and tests), tiny
LoRAs, and the full-size architectures for GPU benchmarks. Torch is imported only when one is built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..sources import tiny_root

if TYPE_CHECKING:
    from ...input.config import ModelConfig


def ensure_tiny_model(config: ModelConfig) -> None:
    """`build_tiny_if_missing`: the embedded tiny model is built where the config expects it (torch is needed)."""
    root = tiny_root(config) if config.build_tiny_if_missing else None
    if root is not None:
        from .tiny import build_tiny_model

        build_tiny_model(root)
