"""The LayerDiffuse transparent VAE decoder (docs/layerdiffuse.md §3): RGB + latent -> alpha + straight RGB."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from torch import nn

# (mirror along width, quarter turns) in the reference's order: index = 4 * flip + k.
TTA_VIEWS = tuple((flip, k) for flip in (False, True) for k in range(4))
CHECKER_CELL = 64
CHECKER_LEVELS = (0.45, 0.55)


class TransparentVAEDecoder(ModelMixin, ConfigMixin):
    """`UNet1024` of the reference: a time-free diffusers UNet whose latent branch joins at 1/8 scale.

    Channel 0 of the output is alpha, channels 1-3 straight (not premultiplied) RGB.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = ("DownBlock2D",) * 4 + ("AttnDownBlock2D",) * 3,
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D",) * 3 + ("UpBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (32, 32, 64, 128, 256, 512, 512),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 4,
        norm_eps: float = 1e-5,
        latent_channels: int = 4,
    ):
        super().__init__()
        common = dict(
            temb_channels=None,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            resnet_time_scale_shift="default",
            dropout=dropout,
        )
        channels = list(block_out_channels)
        last = len(channels) - 1
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        # Joins the feature map before down block 3, which runs at latent resolution (1/8).
        self.latent_conv_in = nn.Conv2d(latent_channels, channels[2], kernel_size=1)

        self.down_blocks = nn.ModuleList()
        for i, block_type in enumerate(down_block_types):
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers_per_block,
                    in_channels=channels[max(i - 1, 0)],
                    out_channels=channels[i],
                    add_downsample=i != last,
                    attention_head_dim=attention_head_dim or channels[i],
                    downsample_padding=downsample_padding,
                    downsample_type=downsample_type,
                    **common,
                )
            )
        self.mid_block = UNetMidBlock2D(
            in_channels=channels[-1],
            temb_channels=None,
            dropout=dropout,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            output_scale_factor=mid_block_scale_factor,
            resnet_time_scale_shift="default",
            attention_head_dim=attention_head_dim or channels[-1],
            resnet_groups=norm_num_groups,
            add_attention=True,
        )
        reversed_channels = channels[::-1]
        self.up_blocks = nn.ModuleList()
        for i, block_type in enumerate(up_block_types):
            self.up_blocks.append(
                get_up_block(
                    block_type,
                    num_layers=layers_per_block + 1,
                    in_channels=reversed_channels[min(i + 1, last)],
                    out_channels=reversed_channels[i],
                    prev_output_channel=reversed_channels[max(i - 1, 0)],
                    add_upsample=i != last,
                    attention_head_dim=attention_head_dim or reversed_channels[i],
                    upsample_type=upsample_type,
                    **common,
                )
            )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], out_channels, kernel_size=3, padding=1)

    def forward(self, pixels01: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """One network pass, unclipped."""
        latent_features = self.latent_conv_in(latent)
        sample = self.conv_in(pixels01)
        skips = (sample,)
        for i, block in enumerate(self.down_blocks):
            if i == 3:
                sample = sample + latent_features
            sample, block_skips = block(hidden_states=sample, temb=None)
            skips += block_skips
        sample = self.mid_block(sample, None)
        for block in self.up_blocks:
            n = len(block.resnets)
            sample, skips = block(sample, skips[-n:], None), skips[:-n]
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))

    @torch.no_grad()
    def decode(
        self, pixels01: torch.Tensor, latent: torch.Tensor, augment: bool = True, sub_batch: int = 16
    ) -> torch.Tensor:
        """[B, 3, H, W] pixels in [0, 1] + [B, 4, H/8, W/8] unscaled latent -> [B, 4, H, W] in [0, 1].

        `augment` runs the 8-view TTA and takes the lower median; `sub_batch` caps the images per call.
        """
        check_decoder_inputs(pixels01, latent)
        pixels01, latent = pixels01.to(self.dtype), latent.to(self.dtype)
        if not augment:
            return self(pixels01, latent).clip(0, 1)
        views = self.tta_views(pixels01, latent, sub_batch)
        return torch.median(views, dim=0).values.clip(0, 1)

    @torch.no_grad()
    def tta_views(self, pixels01: torch.Tensor, latent: torch.Tensor, sub_batch: int = 16) -> torch.Tensor:
        """The 8 de-augmented, clipped passes as [8, B, 4, H, W] (docs/layerdiffuse.md §3.3).

        Views of one shape run batched: one group for square images, two (even/odd turns) otherwise.
        """
        square = pixels01.shape[-1] == pixels01.shape[-2]
        groups = [range(8)] if square else [range(0, 8, 2), range(1, 8, 2)]
        outputs: dict[int, torch.Tensor] = {}
        for indices in groups:
            feed_pixels = torch.cat([_augment(pixels01, *TTA_VIEWS[i]) for i in indices])
            feed_latent = torch.cat([_augment(latent, *TTA_VIEWS[i]) for i in indices])
            pieces = zip(feed_pixels.split(sub_batch), feed_latent.split(sub_batch), strict=True)
            raw = torch.cat([self(p, lat) for p, lat in pieces])
            for i, chunk in zip(indices, raw.clip(0, 1).chunk(len(indices)), strict=True):
                outputs[i] = _restore(chunk, *TTA_VIEWS[i])
        return torch.stack([outputs[i] for i in range(len(TTA_VIEWS))])


def _augment(x: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k=k, dims=(2, 3))


def _restore(x: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    x = torch.rot90(x, k=-k, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if flip else x


def check_decoder_inputs(pixels01: torch.Tensor, latent: torch.Tensor) -> None:
    """Loud errors for the shape mistakes that otherwise surface as skip-connection mismatches."""
    if pixels01.ndim != 4 or pixels01.shape[1] != 3:
        raise ValueError(f"pixels must be [B, 3, H, W], got {list(pixels01.shape)}")
    height, width = pixels01.shape[-2:]
    if height % 64 or width % 64:
        raise ValueError(
            f"image size {width}x{height} is not a multiple of 64 in both sides; "
            "the transparent decoder needs width and height divisible by 64 (e.g. 1024, 960, 896)"
        )
    expected = [pixels01.shape[0], latent.shape[1], height // 8, width // 8]
    if latent.ndim != 4 or list(latent.shape) != expected:
        raise ValueError(f"latent must be {expected} for pixels {list(pixels01.shape)}, got {list(latent.shape)}")


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    # Scale in the tensor's own dtype, then truncate like numpy's astype: the reference's conversion.
    return (x * 255.0).detach().cpu().float().numpy().clip(0, 255).astype(np.uint8)


def to_rgba_uint8(decoded: torch.Tensor) -> np.ndarray:
    """[B, 4, H, W] (alpha first) -> uint8 [B, H, W, 4] straight RGBA, truncated not rounded."""
    y = decoded.clip(0, 1).movedim(1, -1)
    return _to_uint8(torch.cat([y[..., 1:], y[..., :1]], dim=-1))


def checkerboard(height: int, width: int, cell: int = CHECKER_CELL) -> np.ndarray:
    """[H, W] float32 board of `cell`-pixel squares, 0.55 where row cell + column cell is odd."""
    rows = np.arange(height) // cell
    cols = np.arange(width) // cell
    odd = (rows[:, None] + cols[None, :]) % 2
    return np.where(odd == 1, CHECKER_LEVELS[1], CHECKER_LEVELS[0]).astype(np.float32)


def to_preview_uint8(decoded: torch.Tensor) -> np.ndarray:
    """[B, 4, H, W] -> uint8 [B, H, W, 3]: RGB composited over the reference's grey checkerboard."""
    y = decoded.clip(0, 1).movedim(1, -1)
    alpha, rgb = y[..., :1], y[..., 1:]
    board = torch.from_numpy(checkerboard(*rgb.shape[1:3]))[None, ..., None].to(rgb)
    return _to_uint8(rgb * alpha + board * (1 - alpha))
