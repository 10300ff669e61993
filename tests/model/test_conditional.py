"""Conditional layer models on the tiny model: the diff merge with a widened conv_in, each mode's outputs,
the layered triplet, and missing weight files."""

import functools
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.model.conditional import CONDITIONS, layer_images, layers
from pipeline.model.conditional_unet import ConcatConvIn, build_conditional_unet
from pipeline.model.merge import WeightMergeError
from pipeline.model.sources import CONDITIONAL_FILES, ENCODER_FILE, ModelFilesMissing, resolve_sources
from tests.model import files

MODES = tuple(CONDITIONS)


Req = functools.partial(files.Req, negative_prompt="")  # prompts alone condition these tests


@pytest.fixture(scope="module")
def model(tiny_config):
    from pipeline.model import load_model

    return load_model(tiny_config.model, modes=("fg", *MODES))


@pytest.fixture(scope="module")
def base_unet(tiny_model_dir):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_model_dir / "sdxl" / "unet")


def picture(seed: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, 64, 64, channels), dtype=np.uint8)


CONDITION_IMAGES = {"foreground": picture(1, 4), "background": picture(2), "blend": picture(3)}


@pytest.mark.parametrize("mode", MODES)
def test_the_conditional_unet_is_the_base_plus_its_diff_with_a_wider_conv_in(mode, model, base_unet, tiny_model_dir):
    unet = model.conditional[mode]
    diff = load_file(tiny_model_dir / "layerdiffusion-v1" / CONDITIONAL_FILES[mode])
    delta = diff["diffusion_model.input_blocks.0.0.weight::diff::0"].float()
    assert isinstance(unet.conv_in, ConcatConvIn)
    assert unet.conv_in.conv.in_channels == 4 + 4 * len(CONDITIONS[mode]) == delta.shape[1]
    assert unet.config.in_channels == 4  # the pipelines still draw 4-channel latents
    torch.testing.assert_close(unet.conv_in.conv.weight[:, :4], base_unet.conv_in.weight + delta[:, :4])
    torch.testing.assert_close(unet.conv_in.conv.weight[:, 4:], delta[:, 4:])
    # Built from the base UNet, not the transparent one: q/k/v (no diff) are the base's, bit for bit.
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(unet.get_parameter(key), base_unet.get_parameter(key))
    assert not torch.equal(model.pipe.unet.get_parameter(key), base_unet.get_parameter(key))


@pytest.mark.parametrize("mode", ("fg", *MODES))
def test_each_mode_gives_its_documented_output(mode, model):
    out = layer_images(model, mode, [Req("a cat", 1), Req("a dog", 2)], _two(CONDITION_IMAGES), tta=False)
    channels = 4 if mode in ("fg", "blend2fg") else 3
    assert out.shape == (2, 64, 64, channels) and out.dtype == np.uint8
    assert out[0].tobytes() != out[1].tobytes()
    again = layer_images(model, mode, [Req("a cat", 1), Req("a dog", 2)], _two(CONDITION_IMAGES), tta=False)
    assert again.tobytes() == out.tobytes()


def _two(images: dict) -> dict:
    return {name: np.repeat(image, 2, axis=0) for name, image in images.items()}


@pytest.mark.parametrize("mode", MODES)
def test_the_condition_images_steer_the_output(mode, model):
    row = [Req("a cat", 1)]
    first = layer_images(model, mode, row, CONDITION_IMAGES, tta=False)
    changed = {**CONDITION_IMAGES, CONDITIONS[mode][0]: 255 - CONDITION_IMAGES[CONDITIONS[mode][0]]}
    # Measured on the tiny model (2 steps): a mean change of 0.5 to a few levels; without the condition, none.
    assert np.abs(layer_images(model, mode, row, changed, tta=False).astype(int) - first).mean() > 0.25


def test_layers_make_a_triplet_from_nothing_or_from_a_background(model):
    rows = [Req("a fox", 4)]
    made = layers(model, rows, tta=False)
    assert made.foreground.shape == (1, 64, 64, 4)
    assert made.blend.shape == made.background.shape == (1, 64, 64, 3)
    given = layers(model, rows, background=CONDITION_IMAGES["background"], tta=False)
    assert given.foreground.shape == (1, 64, 64, 4) and given.blend.shape == (1, 64, 64, 3)
    assert given.background is CONDITION_IMAGES["background"]
    from pipeline.model.conditional import side_by_side

    assert side_by_side(made).shape == (1, 64, 192, 4)


def test_caller_mistakes_are_value_errors(model, tiny_model):
    with pytest.raises(ValueError, match="needs a blend image"):
        layer_images(model, "blend2fg", [Req("a", 1)], {"background": CONDITION_IMAGES["background"]})
    with pytest.raises(ValueError, match="foreground images must be uint8"):
        layer_images(model, "fg2blend", [Req("a", 1)], {"foreground": picture(1)[:, :32]})
    with pytest.raises(ValueError, match="not loaded"):
        layer_images(tiny_model, "fg2blend", [Req("a", 1)], CONDITION_IMAGES)
    with pytest.raises(ValueError, match="unknown conditional mode"):
        layer_images(model, "fg2bg", [Req("a", 1)], CONDITION_IMAGES)


def test_a_file_without_extra_conv_in_channels_is_refused(base_unet, tiny_model_dir):
    conv = load_file(tiny_model_dir / "layerdiffusion-v1" / "layer_xl_transparent_conv.safetensors")
    with pytest.raises(WeightMergeError, match="not a conditional layer model"):
        build_conditional_unet(base_unet, conv)


def test_new_files_are_needed_only_by_rows_that_use_them(tiny_config, tiny_model_dir, tmp_path):
    folder = tmp_path / "layerdiffusion-v1"
    folder.mkdir()
    for name in ("layer_xl_transparent_attn.safetensors", "vae_transparent_decoder.safetensors"):
        shutil.copy(tiny_model_dir / "layerdiffusion-v1" / name, folder / name)
    config = replace(tiny_config.model, layerdiffuse=str(folder))
    resolve_sources(config).raise_if_missing()  # text-to-image: nothing new is needed
    sources = resolve_sources(config, encoder=True, modes=("fg", "fg2blend", "blend2fg"))
    with pytest.raises(ModelFilesMissing) as missing:
        sources.raise_if_missing()
    message = str(missing.value)
    for name in (ENCODER_FILE, CONDITIONAL_FILES["fg2blend"], CONDITIONAL_FILES["blend2fg"]):
        assert str(folder / name) in message
    assert CONDITIONAL_FILES["bg2blend"] not in message
    expected = "huggingface-cli download LayerDiffusion/layerdiffusion-v1 vae_transparent_encoder.safetensors"
    assert f"{expected} layer_xl_fg2ble.safetensors layer_xl_bgble2fg.safetensors" in message
    from pipeline.model import load_model

    with pytest.raises(ModelFilesMissing, match="layer_xl_fg2ble"):
        load_model(config, modes=("fg2blend",))
    with pytest.raises(ValueError, match="unknown layer mode"):
        resolve_sources(config, modes=("fg2bg",))
