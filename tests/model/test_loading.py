"""Loading through the real code path: files on disk, hub ids, and precise errors for what is missing."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from pipeline.input.config import ModelConfig
from pipeline.model import ModelFilesMissing, load_decoder, load_model
from pipeline.model.testing.tiny import ATTN_FILE, DECODER_CHANNELS, DECODER_FILE
from tests.conftest import fixture_json


def test_tiny_model_uses_the_real_on_disk_formats(tiny_model_dir):
    sdxl = tiny_model_dir / "sdxl"
    index = json.loads((sdxl / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    for folder in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (sdxl / folder).is_dir(), folder
    lora = load_file(tiny_model_dir / "layerdiffusion-v1" / ATTN_FILE)
    assert lora and all(k.startswith("diffusion_model.") and k[-9:-1] == "::lora::" for k in lora)
    assert {v.dtype for v in lora.values()} == {torch.float16}
    decoder = load_file(tiny_model_dir / "layerdiffusion-v1" / DECODER_FILE)
    assert set(decoder) == set(fixture_json("keys_vae_transparent_decoder.json"))


def test_loaded_tiny_model_has_weights_merged_and_decoder_widths_read_from_file(tiny_model, tiny_model_dir):
    from diffusers import UNet2DConditionModel

    plain = UNet2DConditionModel.from_pretrained(tiny_model_dir / "sdxl" / "unet")
    merged = tiny_model.pipe.unet.state_dict()
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert not torch.equal(merged[key], plain.state_dict()[key])
    assert torch.equal(merged["conv_in.weight"], plain.state_dict()["conv_in.weight"])
    assert tuple(tiny_model.decoder.config.block_out_channels) == DECODER_CHANNELS
    assert tiny_model.pipe.watermark is None


def test_decoder_loads_strictly(tmp_path, tiny_model_dir):
    state = load_file(tiny_model_dir / "layerdiffusion-v1" / DECODER_FILE)
    state.pop("conv_out.bias")
    from safetensors.torch import save_file

    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(RuntimeError, match="conv_out.bias"):
        load_decoder(tmp_path / "broken.safetensors")


def test_missing_local_files_are_listed_with_the_fix(tmp_path):
    config = ModelConfig(base=str(tmp_path / "nowhere" / "sdxl"), layerdiffuse=str(tmp_path / "ld"))
    with pytest.raises(ModelFilesMissing) as info:
        load_model(config)
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "sdxl") in message
    assert "layer_xl_transparent_attn.safetensors" in message
    assert "vae_transparent_decoder.safetensors" in message
    assert "huggingface-cli download" in message and "configs/tiny.yaml" in message


def test_uncached_hub_ids_offline_are_listed():
    # conftest points HF_HOME at an empty cache and sets HF_HUB_OFFLINE before any library import
    config = ModelConfig(injection="conv")
    with pytest.raises(ModelFilesMissing) as info:
        load_model(config)
    message = str(info.value)
    assert "hub repo stabilityai/stable-diffusion-xl-base-1.0" in message
    assert "layer_xl_transparent_conv.safetensors from hub repo LayerDiffusion/layerdiffusion-v1" in message
    assert "vae_transparent_decoder.safetensors" in message


def test_partial_local_folder_names_the_missing_component(tmp_path, tiny_model_dir):
    import shutil

    copy = tmp_path / "sdxl"
    shutil.copytree(tiny_model_dir / "sdxl", copy)
    shutil.rmtree(copy / "text_encoder_2")
    config = ModelConfig(base=str(copy), layerdiffuse=str(tiny_model_dir / "layerdiffusion-v1"))
    with pytest.raises(ModelFilesMissing, match="text_encoder_2"):
        load_model(config)


def test_conv_injection_loads(tiny_config):
    model = load_model(replace(tiny_config.model, injection="conv"))
    assert model.identity["unet_weights"].endswith("layer_xl_transparent_conv.safetensors")


def test_damaged_weight_file_is_a_model_error_naming_it(tmp_path, tiny_model_dir):
    import shutil

    from pipeline.model import ModelLoadError

    weights = tmp_path / "layerdiffusion-v1"
    shutil.copytree(tiny_model_dir / "layerdiffusion-v1", weights)
    decoder = weights / DECODER_FILE
    decoder.write_bytes(decoder.read_bytes()[:1000])  # cut short, as by an interrupted download
    config = ModelConfig(base=str(tiny_model_dir / "sdxl"), layerdiffuse=str(weights))
    with pytest.raises(ModelLoadError, match=f"cannot load the transparent decoder from {decoder}"):
        load_model(config)
