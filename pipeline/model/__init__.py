"""SDXL + LayerDiffuse: the transparent decoder and encoder, the UNet weight merge, loading (folders, single-file
checkpoints, VAE overrides), LoRA adapters, generation, img2img / hires, conditional layer models; random-weight
test models in testing/.

Names load on first use, so importing a torch-free submodule (`sources`) does not import torch.
"""

import importlib
import os

# Set before transformers is first imported: its import-time notices go to the run log otherwise.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

_HOMES = {
    "inspect_checkpoint": "checkpoint",
    "require_sdxl_checkpoint": "checkpoint",
    "Layers": "conditional",
    "build_conditional_unet": "conditional_unet",
    "layer_images": "conditional",
    "layers": "conditional",
    "side_by_side": "conditional",
    "TransparentVAEDecoder": "decoder",
    "checkerboard": "decoder",
    "to_preview_uint8": "decoder",
    "to_rgba_uint8": "decoder",
    "LatentTransparencyOffsetEncoder": "encoder",
    "encode_rgba": "encoder",
    "load_encoder": "encoder",
    "pad_rgb": "encoder",
    "free_memory": "generation",
    "generate_rgba": "generation",
    "generate_hires_rgba": "img2img",
    "hires_rgba": "img2img",
    "hires_size": "img2img",
    "img2img_rgba": "img2img",
    "resize_rgba": "img2img",
    "LayerDiffuseModel": "loading",
    "load_decoder": "loading",
    "load_model": "loading",
    "resolve_device": "loading",
    "LoraAdapters": "lora",
    "LoraError": "lora",
    "ResolvedLora": "lora",
    "resolve_lora": "lora",
    "WeightMergeError": "merge",
    "merge_layerdiffuse_weights": "merge",
    "SafetyChecker": "safety",
    "build_tiny_safety_checker": "safety",
    "load_safety_checker": "safety",
    "screen": "safety",
    "ModelFilesMissing": "sources",
    "ModelLoadError": "sources",
    "build_tiny_model": "testing.tiny",
    "write_single_file": "testing.tiny",
    "build_tiny_lora": "testing.tiny_lora",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function (and test monkeypatches stick)
    return value
