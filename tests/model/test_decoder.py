"""Transparent decoder: parity with the reference outputs in tests/fixtures/layerdiffuse."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.model import TransparentVAEDecoder, checkerboard, to_preview_uint8, to_rgba_uint8
from pipeline.model.decoder import TTA_VIEWS, _augment, _restore
from tests.conftest import fixture_json, fixture_path


@pytest.fixture(scope="module")
def reference():
    config = fixture_json("decoder_parity_seed0_config.json")
    decoder = TransparentVAEDecoder(**config["init_kwargs"]).eval()
    decoder.load_state_dict(load_file(fixture_path("decoder_parity_seed0_weights.safetensors")), strict=True)
    return decoder, load_file(fixture_path("decoder_parity_seed0.safetensors"))


def test_full_size_state_dict_matches_official_keys_and_shapes():
    official = fixture_json("keys_vae_transparent_decoder.json")
    with torch.device("meta"):
        decoder = TransparentVAEDecoder()
    ours = {k: list(v.shape) for k, v in decoder.state_dict().items()}
    assert ours == {k: v["shape"] for k, v in official.items()}
    assert sum(v.numel() for v in decoder.state_dict().values()) == 104_104_804


def test_single_pass_fp32(reference):
    decoder, ref = reference
    with torch.no_grad():
        out = decoder(ref["input.pixel01"], ref["input.latent"])
    assert (out - ref["fp32.single_pass_raw"]).abs().max() <= 2e-5


def test_every_tta_view_and_the_lower_median(reference):
    decoder, ref = reference
    with torch.no_grad():
        views = decoder.tta_views(ref["input.pixel01"], ref["input.latent"])
    assert views.shape == ref["fp32.tta_passes"].shape
    for i in range(8):
        assert (views[i] - ref["fp32.tta_passes"][i]).abs().max() <= 1e-4, f"view {i} = {TTA_VIEWS[i]}"
    median = decoder.decode(ref["input.pixel01"], ref["input.latent"])
    assert (median - ref["fp32.tta_median"]).abs().max() <= 1e-4


def test_uint8_outputs_truncate_like_the_reference(reference):
    decoder, ref = reference
    median = decoder.decode(ref["input.pixel01"], ref["input.latent"])
    np.testing.assert_array_equal(to_rgba_uint8(median), ref["fp32.rgba_uint8"].numpy())
    np.testing.assert_array_equal(to_preview_uint8(median), ref["fp32.vis_uint8"].numpy())
    rounded = np.round(median.clip(0, 1).movedim(1, -1).numpy() * 255).astype(np.uint8)
    assert (rounded[..., 0] != to_rgba_uint8(median)[..., 3]).any(), "fixture must tell rounding from truncation"


def test_fp16_paths(reference):
    decoder, ref = reference
    half = TransparentVAEDecoder.from_config(decoder.config).eval()
    half.load_state_dict(decoder.state_dict())
    half = half.half()
    pixels, latent = ref["input.pixel01"].half(), ref["input.latent"].half()
    with torch.no_grad():
        single = half(pixels, latent)
    assert (single.float() - ref["fp16.single_pass_raw"].float()).abs().max() <= 1e-2
    median = half.decode(pixels, latent)
    assert (median.float() - ref["fp16.tta_median"].float()).abs().max() <= 1e-2
    rgba_diff = np.abs(to_rgba_uint8(median).astype(int) - ref["fp16.rgba_uint8"].numpy())
    vis_diff = np.abs(to_preview_uint8(median).astype(int) - ref["fp16.vis_uint8"].numpy())
    assert rgba_diff.max() <= 3 and vis_diff.max() <= 3


def test_batched_tta_equals_eight_sequential_passes_on_non_square_batches(reference):
    decoder, _ = reference
    generator = torch.Generator().manual_seed(3)
    pixels = torch.rand(2, 3, 64, 128, generator=generator)
    latent = torch.randn(2, 4, 8, 16, generator=generator) * 5
    with torch.no_grad():
        sequential = torch.stack(
            [_restore(decoder(_augment(pixels, *v), _augment(latent, *v)).clip(0, 1), *v) for v in TTA_VIEWS]
        )
    batched = decoder.tta_views(pixels, latent, sub_batch=3)
    assert (batched - sequential).abs().max() <= 1e-5
    decoded = decoder.decode(pixels, latent, sub_batch=3)
    assert decoded.shape == (2, 4, 64, 128)
    assert torch.equal(decoded, torch.median(batched, dim=0).values.clip(0, 1))


@pytest.mark.parametrize("shape", [(1, 3, 96, 64), (1, 3, 64, 100)])
def test_sizes_not_multiple_of_64_are_refused(reference, shape):
    decoder, _ = reference
    pixels = torch.rand(shape)
    latent = torch.rand(1, 4, shape[2] // 8, shape[3] // 8)
    with pytest.raises(ValueError, match="multiple of 64"):
        decoder.decode(pixels, latent)


def test_checkerboard_cells():
    board = checkerboard(128, 192)
    assert board.shape == (128, 192)
    assert board[0, 0] == np.float32(0.45) and board[0, 64] == np.float32(0.55)
    assert board[64, 0] == np.float32(0.55) and board[64, 64] == np.float32(0.45)
    assert set(np.unique(board)) == {np.float32(0.45), np.float32(0.55)}
