"""Transparent encoder: official keys, parity with the reference (pad_rgb, offset, x300 latent), loading."""

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import load_file, save_file

from pipeline.model.encoder import (
    OFFSET_SCALE,
    LatentTransparencyOffsetEncoder,
    encode_rgba,
    encoder_inputs,
    load_encoder,
    pad_rgb,
)
from pipeline.model.merge import WeightMergeError
from tests.conftest import fixture_json, fixture_path


@pytest.fixture(scope="module")
def reference():
    return load_file(fixture_path("encoder_parity_seed0.safetensors"))


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(fixture_path("encoder_parity_seed0_weights_fp16.safetensors"))


class StubVAE:
    """Returns the fixture's posterior, as the reference's stub VAE did (the SDXL VAE is not under test)."""

    dtype = torch.float32

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters

    def encode(self, feed):
        self.feed = feed
        return type("Encoded", (), {"latent_dist": DiagonalGaussianDistribution(self.parameters)})()


def test_state_dict_matches_the_released_keys_and_shapes():
    official = fixture_json("keys_vae_transparent_encoder.json")
    ours = {k: list(v.shape) for k, v in LatentTransparencyOffsetEncoder().state_dict().items()}
    assert ours == {k: v["shape"] for k, v in official.items()}
    assert sum(np.prod(v) for v in ours.values()) == 1_181_764


def test_pad_rgb_and_the_vae_feed_match_the_reference(reference):
    rgba = reference["input.rgba_uint8"].numpy()
    assert np.abs(pad_rgb(rgba) - reference["pad_rgb"].numpy()).max() <= 1e-5
    vae_feed, offset_feed = encoder_inputs(rgba[None])
    assert torch.equal(vae_feed, reference["vae_feed"])
    assert torch.equal(offset_feed[:, :1], torch.from_numpy(rgba[None, ..., 3:] / np.float32(255)).movedim(-1, 1))


def test_offset_matches_the_reference_in_fp32_and_fp16(reference, encoder):
    _, feed = encoder_inputs(reference["input.rgba_uint8"].numpy()[None])
    assert (encoder(feed) - reference["fp32.offset_raw"]).abs().max() <= 1e-5
    half = LatentTransparencyOffsetEncoder().half()
    half.load_state_dict(load_file(fixture_path("encoder_parity_seed0_weights_fp16.safetensors")))
    assert (half(feed.half()).float() - reference["fp16.offset_raw"]).abs().max() <= 2e-2


def test_latent_uses_the_x300_offset_of_the_diffusers_cli(reference, encoder):
    vae = StubVAE(reference["input.latent_dist_parameters"])
    latent = encode_rgba(vae, encoder, reference["input.rgba_uint8"].numpy()[None])
    assert torch.equal(vae.feed, reference["vae_feed"])
    assert OFFSET_SCALE == 300.0
    assert (latent - reference["fp32.latent_with_offset"]).abs().max() <= 5e-3
    # Forge's choice (offset unscaled) is measurably different: the test would catch a silent switch.
    forge = encode_rgba(vae, encoder, reference["input.rgba_uint8"].numpy()[None], offset_scale=1.0)
    assert (forge - reference["fp32.latent_with_offset"]).abs().max() > 1.0
    mean = reference["input.latent_dist_parameters"][:, :4]
    assert (forge - mean).abs().max() < (latent - mean).abs().max() / 100


def test_pad_rgb_fills_transparent_pixels_with_nearby_colour():
    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 255)  # an opaque red band on the left, nothing elsewhere
    padded = pad_rgb(rgba)
    assert padded.shape == (64, 96, 3) and padded.dtype == np.float32
    np.testing.assert_allclose(padded[:, :20], np.tile([1.0, 0.0, 0.0], (64, 20, 1)), atol=1e-6)
    assert np.abs(padded[:, 20:] - [1.0, 0.0, 0.0]).max() < 1e-3  # red spreads into the transparent part


def test_inputs_must_be_uint8_rgba():
    with pytest.raises(ValueError, match="uint8 RGBA"):
        encoder_inputs(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGBA"):
        encoder_inputs(np.zeros((1, 64, 64, 4), np.float32))


def test_loading_is_strict_and_safetensors_only(tmp_path):
    weights = load_file(fixture_path("encoder_parity_seed0_weights_fp16.safetensors"))
    del weights["blocks.16.bias"]
    save_file(weights, tmp_path / "broken.safetensors")
    with pytest.raises(RuntimeError, match="blocks.16.bias"):
        load_encoder(tmp_path / "broken.safetensors")
    with pytest.raises(WeightMergeError, match="only .safetensors"):
        load_encoder(tmp_path / "encoder.pt")
