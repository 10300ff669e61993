"""GPU benchmarks (`make bench-gpu`): full-size SDXL + LayerDiffuse architectures with random weights.

Timing and memory do not depend on weight values. 1024x1024, 20 steps, CFG 8, TTA on, batch 1/2/4,
bf16 and fp16: seconds per image, peak memory, and the time shares of UNet (denoising), VAE, transparent
decoder and PNG writing. Then the fast path against the eager baseline, in the same run:
  baseline: diffusers' classic attention processor, VAE upcast to fp32, NCHW;
  + SDPA attention; + channels_last; + VAE in the model dtype (bf16, where it does not overflow);
  + torch.compile (compile time reported separately).
CFG already runs as one batched UNet call per step in diffusers' SDXL pipeline.
Writes tests/bench/RESULTS_GPU.md. Without CUDA it says so and exits 0.
`--smoke` runs the same code on CPU at toy sizes, to check the script itself.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import dataclass

import torch

from pipeline.model.decoder import to_rgba_uint8
from pipeline.model.generation import denoise, vae_decode
from pipeline.model.testing.fullsize import random_fullsize_model

from .common import HERE, machine, table


@dataclass
class Req:
    prompt: str
    seed: int
    negative_prompt: str = "text, watermark"
    width: int = 1024
    height: int = 1024
    num_inference_steps: int = 20
    guidance_scale: float = 8.0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_batch(model, rows, device) -> dict:
    """Seconds per stage for one batch."""
    from PIL import Image

    times = {}
    started = time.perf_counter()
    latent = denoise(model, rows)
    sync(device)
    times["unet"] = time.perf_counter() - started
    started = time.perf_counter()
    pixels = vae_decode(model, latent)
    sync(device)
    times["vae"] = time.perf_counter() - started
    started = time.perf_counter()
    decoded = model.decoder.decode(pixels, latent)
    sync(device)
    times["decoder"] = time.perf_counter() - started
    started = time.perf_counter()
    for image in to_rgba_uint8(decoded):
        Image.fromarray(image, "RGBA").save(io.BytesIO(), format="PNG", compress_level=6)
    times["writing"] = time.perf_counter() - started
    return times


def configure(model, variant: str, dtype) -> None:
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    pipe = model.pipe
    processor = AttnProcessor() if variant == "baseline" else AttnProcessor2_0()  # classic vs SDPA
    for module in (*pipe.unet.modules(), *pipe.vae.modules(), *model.decoder.modules()):
        if isinstance(module, Attention):
            module.set_processor(processor)
    fast_vae = variant in ("vae", "compile") and dtype == torch.bfloat16
    pipe.vae.to(dtype if fast_vae else torch.float32)
    layout = torch.channels_last if variant in ("channels_last", "vae", "compile") else torch.contiguous_format
    for module in (pipe.unet, pipe.vae, model.decoder):
        module.to(memory_format=layout)


def measure(model, device, batch: int, size: int, steps: int, repeats: int) -> dict:
    rows = [Req(f"a glass bottle {i}", i, width=size, height=size, num_inference_steps=steps) for i in range(batch)]
    run_batch(model, rows, device)  # warm-up (and compilation, when compiled)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = [run_batch(model, rows, device) for _ in range(repeats)]
    stages = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
    total = sum(stages.values())
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"s_per_image": total / batch, "peak_gib": peak, **{k: v / total for k, v in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="CPU, toy size: checks the script only")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: GPU benchmarks skipped (see tests/bench/RESULTS.md for the CPU ones)")
        return
    device = torch.device("cpu" if args.smoke else "cuda")
    size, steps, repeats = (128, 2, 1) if args.smoke else (1024, 20, 3)
    batches = (1, 2) if args.smoke else (1, 2, 4)
    dtypes = (torch.bfloat16,) if args.smoke else (torch.bfloat16, torch.float16)
    rows = []
    for dtype in dtypes:
        model = random_fullsize_model(device, dtype) if not args.smoke else _smoke_model(device, dtype)
        for variant in ("baseline", "sdpa", "channels_last", "vae", "compile"):
            configure(model, variant, dtype)
            compile_s = _compile(model, device, size, steps) if variant == "compile" else None
            for batch in batches:
                r = measure(model, device, batch, size, steps, repeats)
                rows.append([str(dtype).removeprefix("torch."), variant, batch, f"{r['s_per_image']:.3f}",
                             f"{r['peak_gib']:.1f}", *(f"{r[k]:.0%}" for k in ("unet", "vae", "decoder", "writing")),
                             f"{compile_s:.0f}" if compile_s else ""])  # fmt: skip
                print(rows[-1], flush=True)
        del model
    text = (
        f"# GPU benchmark results\n\nProduced by `make bench-gpu`. Machine: {machine()}.\n"
        f"{size}x{size}, {steps} steps, CFG 8, TTA on (8 views, batched), random full-size weights; medians of "
        f"{repeats}. Variants are cumulative: baseline -> sdpa -> channels_last -> vae (bf16 VAE) -> compile.\n\n"
        + table(
            ["dtype", "variant", "batch", "s/image", "peak GiB", "UNet", "VAE", "decoder", "writing", "compile s"], rows
        )  # fmt: skip
        + "\n"
    )
    print(text)
    if not args.smoke:
        (HERE / "RESULTS_GPU.md").write_text(text)


def _compile(model, device, size, steps) -> float:
    for module in (model.pipe.unet, model.pipe.vae.decoder, model.decoder):
        module.compile()
    started = time.perf_counter()
    run_batch(model, [Req("warm-up", 0, width=size, height=size, num_inference_steps=steps)], device)
    return time.perf_counter() - started


def _smoke_model(device, dtype):
    """The tiny model through the same code (the full-size one is too slow for a CPU check)."""
    from pipeline.input.config import ModelConfig
    from pipeline.model import load_model

    from .common import REPO

    tiny = REPO / "models" / "tiny"
    config = ModelConfig(base=str(tiny / "sdxl"), layerdiffuse=str(tiny / "layerdiffusion-v1"), device="cpu")
    return load_model(config, device)


if __name__ == "__main__":
    sys.exit(main())
