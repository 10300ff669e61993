"""LoRA switching at full SDXL UNet size: unfused adapters against fuse-and-restore.

Two ways to run a batch under a LoRA set and come back to the exact base afterwards:
- unfused PEFT adapters (what the pipeline does): switching is `set_adapters`, every UNet call pays for the
  low-rank terms `w·B(Ax)` beside the base layers;
- fuse then restore: `W += w·BA` before the batch (zero per-call cost), then the saved base tensors copied back
  (exact, unlike unfusing, which leaves rounding residue).
Measured on the full-size SDXL UNet with random weights and a kohya-style LoRA (rank 32 on every attention
projection), one UNet call with classifier-free guidance (batch 2). Writes its section of tests/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from .common import machine, median, table, write_section

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def full_size_unet(device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    from pipeline.model.testing.fullsize import SDXL_UNET

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET)
    return unet.to(dtype=dtype).requires_grad_(False).eval()


def unet_call(unet, latent: int, device: torch.device, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    args = dict(
        sample=torch.randn(2, 4, latent, latent, generator=generator),
        timestep=torch.tensor([500.0, 500.0]),
        encoder_hidden_states=torch.randn(2, 77, 2048, generator=generator),
        added_cond_kwargs={"text_embeds": torch.randn(2, 1280, generator=generator),
                           "time_ids": torch.randn(2, 6, generator=generator)},
    )  # fmt: skip
    args = {k: v.to(device, dtype) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    args["added_cond_kwargs"] = {k: v.to(device, dtype) for k, v in args["added_cond_kwargs"].items()}

    @torch.inference_mode()
    def call():
        out = unet(**args).sample
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return call


def seconds(function, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return median(times)


def add_lora(unet, rank: int) -> list[torch.nn.Module]:
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False),
                     adapter_name="style")  # fmt: skip
    unet.requires_grad_(False)
    return [m for m in unet.modules() if hasattr(m, "lora_A") and "style" in m.lora_A]


def fuse_and_restore(layers) -> None:
    """The other design's full switch: save the touched base tensors, fuse, (a batch would run), restore."""
    saved = [layer.base_layer.weight.detach().clone() for layer in layers]
    for layer in layers:
        layer.merge(adapter_names=["style"])
    for layer, weight in zip(layers, saved, strict=True):
        layer.merged_adapters.clear()
        layer.base_layer.weight.data.copy_(weight)


def measure(device: torch.device, dtype: torch.dtype, latent: int, rank: int, reps: int) -> dict:
    unet = full_size_unet(device, dtype)
    call = unet_call(unet, latent, device, dtype)
    base = call()  # also the warm-up
    layers = add_lora(unet, rank)
    unet.disable_adapters()
    assert torch.equal(call(), base), "disabled adapters must leave the base output bit-exact"
    plain, unfused = [], []
    for _ in range(reps):  # side by side, so a busy moment of the machine hits both alike
        unet.disable_adapters()
        plain.append(seconds(call, 1))
        unet.enable_adapters()
        unfused.append(seconds(call, 1))
    plain, unfused = median(plain), median(unfused)
    switch_unfused = seconds(lambda: unet.set_adapters(["style"], [0.8]), reps)
    switch_fused = seconds(lambda: fuse_and_restore(layers), reps)
    unet.disable_adapters()
    assert torch.equal(call(), base), "restoring the saved tensors must leave the base bit-exact"
    touched = sum(layer.base_layer.weight.numel() for layer in layers)
    params = sum(p.numel() for p in unet.parameters() if p.dim() > 0) - sum(
        p.numel() for n, p in unet.named_parameters() if "lora_" in n
    )
    return dict(plain=plain, unfused=unfused, switch_unfused=switch_unfused, switch_fused=switch_fused,
                layers=len(layers), touched=touched, params=params)  # fmt: skip


def render(r: dict, device: str, dtype: str, latent: int, rank: int, reps: int) -> str:
    overhead = r["unfused"] - r["plain"]
    breakeven = f"{r['switch_fused'] / overhead:.1f}" if overhead > 0 else "never (no per-call cost measured)"
    rows = [
        ["UNet call, no LoRA (= fused)", f"{r['plain']:.3f} s"],
        ["UNet call, unfused LoRA", f"{r['unfused']:.3f} s ({r['unfused'] / r['plain']:.3f}x)"],
        ["switch, unfused (`set_adapters`)", f"{r['switch_unfused'] * 1000:.1f} ms"],
        ["switch, fuse + restore saved base", f"{r['switch_fused']:.3f} s"],
        ["UNet calls a switch must amortise for fusing to win", breakeven],
    ]
    return (
        f"## LoRA switching at SDXL size (`python -m tests.bench.lora_switch`)\n\n{machine()}\n\n"
        f"Full-size SDXL UNet ({r['params'] / 1e9:.2f} B parameters, random), {device} {dtype}, latent "
        f"{latent}x{latent} ({latent * 8}² image), batch 2 (guidance); LoRA rank {rank} on {r['layers']} attention "
        f"projections ({r['touched'] / 1e6:.0f} M base weights touched); median of {reps}.\n\n"
        + table(["what", "time"], rows)
        + "\n\nBoth designs return to a bit-exact base (checked here). Unfused adapters cost a little on every UNet "
        "call; fuse-and-restore costs a copy of the touched weights on every switch, plus memory for the saved copy. "
        "A 20-step batch with guidance is 20 UNet calls."
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 on CPU, float16 on CUDA by default")
    parser.add_argument("--latent", type=int, default=None, help="latent side (128 = 1024² images; CPU: 16)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("float16" if device.type == "cuda" else "float32")
    latent = args.latent or (128 if device.type == "cuda" else 16)
    result = measure(device, getattr(torch, dtype_name), latent, args.rank, args.reps)
    text = render(result, device.type, dtype_name, latent, args.rank, args.reps)
    print(text)
    if not args.no_write:
        write_section("LoRA switching at SDXL size", text)


if __name__ == "__main__":
    main()
