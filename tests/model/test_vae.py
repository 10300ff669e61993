"""The VAE override (folder or single file) and the precision the VAE decodes in."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.model import ModelLoadError, load_model
from pipeline.model.generation import generate_decoded
from pipeline.model.sgm_checkpoint import VAE_PREFIX, ldm_vae_state_dict
from tests.model.files import KOHYA_LORA, Req, write_tensors

ROW = [Req("a glass of water", 3, num_inference_steps=1, guidance_scale=1.0)]
WEIGHTS = "diffusion_pytorch_model.safetensors"


def vae_folder(tiny_model_dir, target, change=None, **config):
    """A copy of the tiny VAE folder, its weights changed by `change(state)` and its config by `config`."""
    shutil.copytree(tiny_model_dir / "sdxl" / "vae", target)
    if change:
        state = load_file(target / WEIGHTS)
        change(state)
        save_file(state, target / WEIGHTS)
    settings = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**settings, **config}))
    return target


def decoded(tiny_config, **model) -> torch.Tensor:
    return generate_decoded(load_model(replace(tiny_config.model, **model)), ROW, tta=False)


@pytest.fixture(scope="module")
def built_in(tiny_config):
    return decoded(tiny_config)


def test_vae_from_folder_or_single_file_with_the_same_weights_gives_the_same_pixels(
    tiny_config, tiny_model_dir, tmp_path, built_in
):
    folder = vae_folder(tiny_model_dir, tmp_path / "vae")
    single = tmp_path / "sdxl_vae.safetensors"  # LDM names without a prefix, as the released sdxl_vae.safetensors
    state = load_file(folder / WEIGHTS)
    save_file({k.removeprefix(VAE_PREFIX): v for k, v in ldm_vae_state_dict(state, 4).items()}, single)
    assert "decoder.up.0.block.0.conv1.weight" in load_file(single)
    assert torch.equal(decoded(tiny_config, vae=str(folder)), built_in)
    assert torch.equal(decoded(tiny_config, vae=str(single)), built_in)


def test_a_different_vae_gives_different_pixels(tiny_config, tiny_model_dir, tmp_path, built_in):
    def brighter(state):
        state["decoder.conv_out.bias"] += 0.5

    folder = vae_folder(tiny_model_dir, tmp_path / "vae", brighter)
    assert (decoded(tiny_config, vae=str(folder)) - built_in).abs().max() > 0.05


def test_bfloat16_decodes_without_nan(tiny_config):
    model = load_model(replace(tiny_config.model, dtype="bfloat16"))
    assert model.pipe.vae.dtype == torch.bfloat16  # float32's range: no upcast needed
    out = generate_decoded(model, ROW, tta=False)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert out[:, 0].float().std() > 0.01  # a real alpha channel, not a constant


def test_float16_overflowing_vae_is_upcast_when_its_config_says_so(tiny_config, tiny_model_dir, tmp_path):
    """A VAE like SDXL's: activations beyond float16's range (65504) that a GroupNorm later scales back."""

    def huge_activations(state):
        state["decoder.conv_in.weight"] *= 1e5
        state["decoder.conv_in.bias"] *= 1e5

    upcast = vae_folder(tiny_model_dir, tmp_path / "upcast", huge_activations, force_upcast=True)
    plain = vae_folder(tiny_model_dir, tmp_path / "plain", huge_activations, force_upcast=False)
    safe = load_model(replace(tiny_config.model, vae=str(upcast), dtype="float16"))
    assert safe.pipe.unet.dtype == torch.float16 and safe.pipe.vae.dtype == torch.float32
    assert torch.isfinite(generate_decoded(safe, ROW, tta=False)).all()
    overflowing = decoded(tiny_config, vae=str(plain), dtype="float16")
    assert torch.isnan(overflowing).any()  # what the upcast prevents: NaN (black) images


def test_wrong_vae_files_are_refused(tiny_config, tiny_model_dir, tmp_path):
    lora = write_tensors(tmp_path / "style.safetensors", KOHYA_LORA)
    with pytest.raises(ModelLoadError, match=r"VAE file .*style.safetensors is a LoRA .*needed: an SDXL VAE"):
        load_model(replace(tiny_config.model, vae=str(lora)))
    partial = tmp_path / "half_vae.safetensors"
    state = load_file(tiny_model_dir / "sdxl" / "vae" / WEIGHTS)
    save_file({k: v for k, v in state.items() if k.startswith("encoder.")}, partial)
    with pytest.raises(ModelLoadError, match=r"VAE file .*half_vae.safetensors does not fit .*needed: an SDXL VAE"):
        load_model(replace(tiny_config.model, vae=str(partial)))
