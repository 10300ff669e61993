"""SDXL + LayerDiffuse: the transparent decoder, the UNet weight merge, loading, generation, tiny model."""

import os

# Set before transformers is first imported: its import-time notices go to the run log otherwise.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from .decoder import TransparentVAEDecoder, checkerboard, to_preview_uint8, to_rgba_uint8
from .generation import free_memory, generate_rgba
from .loading import LayerDiffuseModel, ModelFilesMissing, ModelLoadError, load_decoder, load_model, resolve_device
from .merge import WeightMergeError, merge_layerdiffuse_weights
from .safety import SafetyChecker, build_tiny_safety_checker, load_safety_checker, screen
from .tiny import build_tiny_model

__all__ = [
    "LayerDiffuseModel",
    "ModelFilesMissing",
    "ModelLoadError",
    "SafetyChecker",
    "TransparentVAEDecoder",
    "WeightMergeError",
    "build_tiny_model",
    "build_tiny_safety_checker",
    "checkerboard",
    "free_memory",
    "generate_rgba",
    "load_decoder",
    "load_model",
    "load_safety_checker",
    "merge_layerdiffuse_weights",
    "resolve_device",
    "screen",
    "to_preview_uint8",
    "to_rgba_uint8",
]
