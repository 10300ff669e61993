"""A conditional layer model's UNet (conditional.py): the base UNet with its `conv_in` widened for the condition
latents and the model's "diff" merged in; the condition is concatenated to the sample at every call."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager

import torch
from torch import nn

from .merge import WeightMergeError, layerdiffuse_deltas, merge_layerdiffuse_weights


class ConcatConvIn(nn.Module):
    """The widened `conv_in`: sample ‖ condition latents. The UNet's config keeps in_channels=4, so the
    pipelines still draw 4-channel latents."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.condition: torch.Tensor | None = None

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        if self.condition is None:
            raise RuntimeError("a conditional layer model ran without its condition latents (use `conditioned`)")
        condition = self.condition.to(sample)
        if sample.shape[0] != condition.shape[0]:  # classifier-free guidance: [uncond rows, cond rows]
            condition = condition.repeat(sample.shape[0] // condition.shape[0], 1, 1, 1)
        return self.conv(torch.cat([sample, condition], dim=1))


def build_conditional_unet(unet: nn.Module, weights: Mapping[str, torch.Tensor], strength: float = 1.0) -> nn.Module:
    """Turn `unet` (a copy of the base UNet; changed in place) into a conditional layer model."""
    deltas = layerdiffuse_deltas(dict(unet.named_parameters()), weights)
    conv_delta = deltas.get("conv_in.weight")
    base = unet.conv_in
    if not isinstance(conv_delta, torch.Tensor) or conv_delta.ndim != 4 or conv_delta.shape[1] <= base.in_channels:
        raise WeightMergeError("not a conditional layer model: its conv_in delta adds no input channels")
    unet.conv_in = _widened(base, conv_delta.shape[1])
    merge_layerdiffuse_weights(unet, weights, strength)
    unet.conv_in = ConcatConvIn(unet.conv_in)
    return unet


def _widened(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    wide = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    wide.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, : conv.in_channels].copy_(conv.weight)
        wide.bias.copy_(conv.bias)
    return wide.requires_grad_(conv.weight.requires_grad)


@contextmanager
def conditioned(unet: nn.Module, condition: torch.Tensor):
    """The condition latents [B, 4k, H/8, W/8] (scaled) for the UNet calls inside the block."""
    unet.conv_in.condition = condition
    try:
        yield unet
    finally:
        unet.conv_in.condition = None
