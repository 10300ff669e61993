"""Transparency encoder: official key set and parity with the reference offset."""

import torch
from safetensors.torch import load_file

from pipeline.model.encoder import LatentTransparencyOffsetEncoder
from tests.conftest import fixture_json, fixture_path


def test_state_dict_matches_official_keys_and_shapes():
    official = fixture_json("keys_vae_transparent_encoder.json")
    ours = {k: list(v.shape) for k, v in LatentTransparencyOffsetEncoder().state_dict().items()}
    assert ours == {k: v["shape"] for k, v in official.items()}


def test_offset_matches_reference():
    encoder = LatentTransparencyOffsetEncoder()
    weights = load_file(fixture_path("encoder_parity_seed0_weights_fp16.safetensors"))
    encoder.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    ref = load_file(fixture_path("encoder_parity_seed0.safetensors"))
    alpha = ref["input.rgba_uint8"][..., 3:].float() / 255
    feed = torch.cat([alpha, ref["pad_rgb"]], dim=-1).movedim(-1, 0)[None]
    with torch.no_grad():
        offset = encoder(feed)
    assert (offset - ref["fp32.offset_raw"]).abs().max() <= 1e-5
