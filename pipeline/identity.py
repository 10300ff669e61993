"""What produced an image: the settings that decide its pixels, and the environment it ran in."""

from __future__ import annotations

import platform
import socket

from .config import Config


def request_identity(config: Config) -> dict:
    """The settings besides a row's own that decide its pixels (hashed into each record's request_hash)."""
    m = config.model
    return {
        "base": m.base,
        "variant": m.variant,
        "vae": m.vae,
        "layerdiffuse": m.layerdiffuse,
        "unet_weights": m.unet_weights_file,
        "decoder_weights": m.decoder_weights,
        "injection": m.injection,
        "strength": m.strength,
        "scheduler": m.scheduler,
        "safety_checker": m.safety_checker,
        "dtype": m.dtype,
        "tta": config.run.tta,
        "batch_size": config.run.batch_size,
    }


def model_label(config: Config) -> str:
    """Short model name for PNG metadata, e.g. `stable-diffusion-xl-base-1.0 + LayerDiffuse attn`."""
    base = config.model.base.rstrip("/").split("/")[-1]
    return f"{base} + LayerDiffuse {config.model.injection}"


def environment(device, dtype, config: Config, world_size: int) -> dict:
    import accelerate
    import diffusers
    import torch
    import transformers

    from .model.generation import default_sub_batch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "device": str(device),
        "device_name": name,
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": config.run.batch_size,
        "tta": config.run.tta,
        "decoder_sub_batch": config.run.decoder_sub_batch or default_sub_batch(device),
        "cpu_threads": torch.get_num_threads(),  # CPU results depend on it (reduction order)
        "host": socket.gethostname(),
        "world_size": world_size,
    }
