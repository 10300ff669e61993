"""The LayerDiffuse transparency encoder (SPEC §5): alpha + padded RGB -> latent offset.

Text-to-image does not use it; it is here so the released `vae_transparent_encoder.safetensors`
loads strictly, for img2img of transparent inputs.
"""

from __future__ import annotations

from torch import nn

WIDTHS = (32, 32, 64, 64, 128, 128, 256, 256)
STRIDE_2_LAYERS = (2, 4, 6)  # 1/8 resolution at the output, like the SDXL latent


class LatentTransparencyOffsetEncoder(nn.Module):
    def __init__(self, in_channels: int = 4, latent_channels: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(WIDTHS):
            layers += [nn.Conv2d(previous, width, 3, padding=1, stride=2 if i in STRIDE_2_LAYERS else 1), nn.SiLU()]
            previous = width
        layers.append(nn.Conv2d(previous, latent_channels, 3, padding=1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, alpha_and_rgb):
        """[B, 4, H, W] (alpha first, both in [0, 1]) -> [B, 4, H/8, W/8] offset, before any multiplier."""
        return self.blocks(alpha_and_rgb)
