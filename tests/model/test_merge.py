"""UNet weight merge: the six reference variants, key handling, and loud errors."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from pipeline.model import WeightMergeError, merge_layerdiffuse_weights
from pipeline.model.keys import sgm_key_map
from tests.conftest import fixture_json, fixture_path

FILES = {
    "attn": "synthetic_layer_xl_transparent_attn_seed0.safetensors",
    "cli": "synthetic_ld_diffusers_sdxl_attn_seed0.safetensors",
    "conv": "synthetic_layer_xl_transparent_conv_seed0.safetensors",
}
VARIANTS = {
    "attn_forge_w1.0_fp32": ("attn", torch.float32, 1.0),
    "attn_forge_w1.0_fp16": ("attn", torch.float16, 1.0),
    "attn_forge_w0.5_fp32": ("attn", torch.float32, 0.5),
    "attn_cli_fp16": ("cli", torch.float16, 1.0),
    "conv_forge_w1.0_fp32": ("conv", torch.float32, 1.0),
    "conv_forge_w1.0_fp16": ("conv", torch.float16, 1.0),
}


def tiny_unet(dtype=torch.float32) -> UNet2DConditionModel:
    unet = UNet2DConditionModel.from_config(fixture_json("unet_tiny_seed0_config.json"))
    unet.load_state_dict(load_file(fixture_path("unet_tiny_seed0_init.safetensors")))
    return unet.to(dtype)


@pytest.fixture(scope="module")
def expected():
    return load_file(fixture_path("unet_merge_expected_seed0.safetensors"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_merge_matches_reference(variant, expected):
    source, dtype, strength = VARIANTS[variant]
    unet = tiny_unet(dtype)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    patched = merge_layerdiffuse_weights(unet, fixture_path(FILES[source]), strength)
    want = {k.split("/", 1)[1]: v for k, v in expected.items() if k.startswith(variant + "/")}
    assert set(patched) == set(want)
    after = unet.state_dict()
    for key, value in want.items():
        assert after[key].dtype == dtype
        if dtype == torch.float32:
            assert (after[key] - value).abs().max() <= 1e-6, key
        else:
            torch.testing.assert_close(after[key], value, rtol=1e-3, atol=1e-5)
    untouched = [k for k in after if k not in want]
    assert untouched and all(torch.equal(after[k], before[k]) for k in untouched)


def test_every_file_key_maps_to_exactly_one_tensor():
    unet = tiny_unet()
    mapping = sgm_key_map(unet.state_dict())
    attn = load_file(fixture_path(FILES["attn"]))
    conv = load_file(fixture_path(FILES["conv"]))
    attn_targets = {mapping[k.split("::")[0]] for k in attn}
    conv_targets = [mapping[k.split("::")[0]] for k in conv]
    assert len(attn_targets) == len(attn) // 2 == 224
    assert len(set(conv_targets)) == len(conv) == 672
    assert {"time_embedding.linear_1.weight", "add_embedding.linear_2.bias"} <= set(conv_targets)


def test_full_sdxl_key_map_matches_reference_table():
    table = fixture_json("sdxl_unet_diffusers_to_ldm_keymap.json")
    mapping = sgm_key_map(table)
    assert len(mapping) == 1680
    assert all(table[diffusers]["ldm"] == sgm for sgm, diffusers in mapping.items())


def test_derived_release_key_lists_fit_the_full_sdxl_unet():
    table = fixture_json("sdxl_unet_diffusers_to_ldm_keymap.json")
    by_sgm = {v["ldm"]: v["shape"] for v in table.values()}
    attn = fixture_json("keys_layer_xl_transparent_attn.derived.json")
    for key, meta in attn.items():
        model_key, _, index = key.split("::")
        rows, cols = by_sgm[model_key]
        assert meta["shape"] == ([rows, 256] if index == "0" else [256, cols]), key
    conv = fixture_json("keys_layer_xl_transparent_conv.derived.json")
    assert all(by_sgm[k.split("::")[0]] == v["shape"] for k, v in conv.items())
    cli = fixture_json("keys_ld_diffusers_sdxl_attn.derived.json")
    assert all(table[k]["shape"] == v["shape"] for k, v in cli.items())


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(WeightMergeError, match="input_blocks.99"):
        merge_layerdiffuse_weights(tiny_unet(), {"diffusion_model.input_blocks.99.0.weight::diff::0": torch.zeros(1)})
    with pytest.raises(WeightMergeError, match="no_such.weight"):
        merge_layerdiffuse_weights(tiny_unet(), {"no_such.weight": torch.zeros(1)})


def test_shape_mismatch_is_an_error_naming_the_key():
    weights = {"diffusion_model.input_blocks.0.0.weight::diff::0": torch.zeros(8, 4, 1, 1)}
    with pytest.raises(WeightMergeError, match="conv_in.weight"):
        merge_layerdiffuse_weights(tiny_unet(), weights)


def test_only_safetensors_files_are_loaded(tmp_path):
    pickled = tmp_path / "layer_xl_transparent_attn.ckpt"
    torch.save({}, pickled)
    with pytest.raises(WeightMergeError, match="only .safetensors"):
        merge_layerdiffuse_weights(tiny_unet(), pickled)
    good = tmp_path / "offsets.safetensors"
    save_file({"conv_in.bias": torch.ones(8)}, good)
    unet = tiny_unet()
    bias = unet.conv_in.bias.detach().clone()
    assert merge_layerdiffuse_weights(unet, good, strength=0.5) == ["conv_in.bias"]
    assert torch.equal(unet.conv_in.bias.detach(), bias + 0.5)
