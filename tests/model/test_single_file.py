"""Single-file SDXL checkpoints: the tiny model as one file loads to the same pixels; other files are refused
from their header with what was found and what is needed; the shipped SDXL configuration is the real one."""

import hashlib
import json
import zipfile
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from pipeline.input.config import ModelConfig
from pipeline.model import ModelFilesMissing, ModelLoadError, generate_rgba, load_model
from pipeline.model.checkpoint import inspect_checkpoint, require_sdxl_checkpoint
from pipeline.model.single_file import resolve_base_config
from pipeline.model.testing.tiny import SINGLE_FILE
from tests.model import files
from tests.model.files import ROWS, write_tensors


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Hashes and the shipped configuration go to this test's own cache folder."""
    monkeypatch.setenv("LAYERDIFFUSE_CACHE", str(tmp_path / "cache"))


def test_tiny_single_file_gives_the_same_pixels_as_the_diffusers_folder(tiny_model, tiny_config, tiny_model_dir):
    single = replace(
        tiny_config.model, base=str(tiny_model_dir / SINGLE_FILE), base_config=str(tiny_model_dir / "sdxl")
    )
    model = load_model(single)
    from_file = generate_rgba(model, ROWS[:1], tta=False)
    from_folder = generate_rgba(tiny_model, ROWS[:1], tta=False)
    assert from_file.shape == (1, 64, 64, 4)
    assert from_file.tobytes() == from_folder.tobytes()
    assert model.pipe.unet.dtype == torch.float32 and model.pipe.watermark is None


def test_checkpoint_without_vae_needs_a_vae_given_separately(tiny_model, tiny_config, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    no_vae = tmp_path / "fine-tune-no-vae.safetensors"
    state = load_file(tiny_model_dir / SINGLE_FILE)
    save_file({k: v for k, v in state.items() if not k.startswith("first_stage_model.")}, no_vae)
    single = replace(tiny_config.model, base=str(no_vae), base_config=str(tiny_model_dir / "sdxl"))
    with pytest.raises(ModelLoadError, match="SDXL checkpoint without its VAE.*Give a VAE with --vae"):
        load_model(single)
    model = load_model(replace(single, vae=str(tiny_model_dir / "sdxl" / "vae")))
    assert (
        generate_rgba(model, ROWS[:1], tta=False).tobytes() == generate_rgba(tiny_model, ROWS[:1], tta=False).tobytes()
    )


def test_tiny_single_file_has_the_original_sdxl_layout(tiny_model_dir):
    path = tiny_model_dir / SINGLE_FILE
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        in_proj = handle.get_tensor("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight")
        attention = handle.get_tensor("first_stage_model.decoder.mid.attn_1.q.weight")
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in keys}
    assert prefixes == {"model.diffusion_model", "first_stage_model.encoder", "first_stage_model.decoder",
                        "first_stage_model.quant_conv", "first_stage_model.post_quant_conv",
                        "conditioner.embedders"}  # fmt: skip
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in keys  # the SGM upsampler position
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in keys  # LDM numbers the decoder upwards
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys
    assert in_proj.shape[0] == 3 * in_proj.shape[1]  # q, k and v fused, as OpenCLIP stores them
    assert attention.ndim == 4  # 1x1 convolutions in the LDM VAE
    assert inspect_checkpoint(path).kind == "sdxl"


@pytest.mark.parametrize(
    ("shapes", "found"),
    [
        (files.SD1, "Stable Diffusion 1.x"),
        (files.SD2, "Stable Diffusion 2.x"),
        (files.SD3, "Stable Diffusion 3"),
        (files.FLUX, "FLUX"),
        (files.KOHYA_LORA, "a LoRA"),
        (files.VAE_ONLY, "a VAE alone"),
        (files.LAYERDIFFUSE_PATCH, "LayerDiffuse UNet patch"),
        (files.SDXL_REFINER, "SDXL refiner"),
        (files.SDXL_INPAINT, "inpainting"),
        (files.SDXL_PARTS, "without the VAE"),
    ],
)
def test_other_checkpoints_are_refused_saying_what_they_are(tmp_path, shapes, found):
    path = write_tensors(tmp_path / "model.safetensors", shapes)
    with pytest.raises(ModelLoadError) as info:
        require_sdxl_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and found in message
    assert "needed: an SDXL checkpoint" in message


def test_lora_passed_as_model_says_where_it_belongs(tmp_path):
    path = write_tensors(tmp_path / "style.safetensors", files.KOHYA_LORA)
    with pytest.raises(ModelLoadError, match="--lora"):
        require_sdxl_checkpoint(path)


def test_truncated_checkpoint_is_refused_before_loading(tmp_path, tiny_config, tiny_model_dir):
    path = tmp_path / "cut.safetensors"
    path.write_bytes((tiny_model_dir / SINGLE_FILE).read_bytes()[:200_000])
    with pytest.raises(ModelLoadError, match=r"truncated: the header promises \d+ bytes, the file has 200000"):
        load_model(replace(tiny_config.model, base=str(path), base_config=str(tiny_model_dir / "sdxl")))


def test_pickled_and_foreign_files_are_refused(tmp_path):
    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, pickled)
    assert zipfile.is_zipfile(pickled)
    with pytest.raises(ModelLoadError, match="pickled PyTorch .* it can run code"):
        require_sdxl_checkpoint(pickled)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        require_sdxl_checkpoint(noise)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="too short"):
        require_sdxl_checkpoint(empty)


def test_sd1_checkpoint_as_model_fails_before_any_weight_loads(tmp_path, tiny_model_dir):
    path = write_tensors(tmp_path / "v1-5.safetensors", files.SD1)
    config = ModelConfig(base=str(path), layerdiffuse=str(tiny_model_dir / "layerdiffusion-v1"), device="cpu")
    with pytest.raises(ModelLoadError, match="is a Stable Diffusion 1.x checkpoint") as info:
        load_model(config)
    assert not isinstance(info.value, ModelFilesMissing)


def test_base_config_must_be_a_complete_folder_or_a_cached_hub_id(tmp_path, tiny_model_dir):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir / "sdxl", partial, ignore=shutil.ignore_patterns("tokenizer_2", "*.safetensors"))
    with pytest.raises(ModelFilesMissing, match="lacks tokenizer_2/vocab.json"):
        resolve_base_config(str(partial))
    with pytest.raises(ModelFilesMissing, match="hub repo nobody/no-such-sdxl is not in the Hugging Face cache"):
        resolve_base_config("nobody/no-such-sdxl")
    assert resolve_base_config(str(tiny_model_dir / "sdxl")) == tiny_model_dir / "sdxl"


def test_shipped_config_tokenizers_are_clip(tmp_path):
    """Reference ids from CLIP's vocabulary: "a photo of a cat" is 320 1125 539 320 2368 between 49406/49407."""
    from transformers import CLIPTokenizer

    folder = resolve_base_config(None)
    assert folder.is_relative_to(tmp_path / "cache")
    first = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    second = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
    for tokenizer in (first, second):
        assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert first.pad_token == "<|endoftext|>" and second.pad_token == "!"  # as SDXL's two tokenizers pad
    assert resolve_base_config(None) == folder  # written once, then reused


def test_shipped_config_describes_the_full_size_sdxl():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from pipeline.model.testing.fullsize import CLIP_BIG_G, CLIP_L, SDXL_VAE
    from tests.conftest import fixture_json

    folder = resolve_base_config(None)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
    table = fixture_json("sdxl_unet_diffusers_to_ldm_keymap.json")
    assert {k: list(v.shape) for k, v in unet.state_dict().items()} == {k: v["shape"] for k, v in table.items()}
    assert tuple(vae.config.block_out_channels) == SDXL_VAE["block_out_channels"] and vae.config.force_upcast
    for name, sizes in (("text_encoder", CLIP_L), ("text_encoder_2", CLIP_BIG_G)):
        config = CLIPTextConfig.from_pretrained(folder, subfolder=name)
        assert {k: getattr(config, k) for k in sizes} == sizes, name
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"


def test_single_file_of_a_model_is_hashed_like_automatic1111(tiny_model_dir):
    from pipeline.model.provenance import a1111_fields, model_identity

    path = tiny_model_dir / SINGLE_FILE
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert a1111_fields(model_file=str(path))[:2] == [("Model hash", digest[:10]), ("Model", "sdxl-tiny")]
    identity = model_identity(str(path))
    assert identity["sha256"] == digest and identity["model_hash"] == digest[:10]
    assert identity["base_config"] == "shipped SDXL base configuration"


def test_full_size_single_file_layout_round_trips_through_diffusers_with_the_shipped_config():
    """At full SDXL size on meta tensors (no memory): our layout is what diffusers' own converters expect,
    it recognises it as SDXL base, and every tensor lands on a weight of the shipped configuration's model."""
    from types import SimpleNamespace

    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as convert
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.model.checkpoint import classify
    from pipeline.model.safetensors_header import SafetensorsHeader, Tensor
    from pipeline.model.sgm_checkpoint import CLIP_G_PREFIX, single_file_state_dict

    folder = resolve_base_config(None)
    with init_empty_weights():
        pipe = SimpleNamespace(
            unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet")),
            vae=AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae")),
            text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder")),
            text_encoder_2=CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2")
            ),
        )
    checkpoint = single_file_state_dict(pipe)
    assert convert.infer_diffusers_model_type(checkpoint) == "xl_base"
    header = SafetensorsHeader(
        "sd_xl_base.safetensors", {k: Tensor("F16", tuple(v.shape)) for k, v in checkpoint.items()}
    )
    assert classify(header)[0] == "sdxl"

    def shapes(state):
        return {k.removeprefix("text_model."): tuple(v.shape) for k, v in state.items()}

    converted = {
        "unet": convert.convert_ldm_unet_checkpoint(checkpoint, pipe.unet.config),
        "vae": convert.convert_ldm_vae_checkpoint(checkpoint, pipe.vae.config),
        "text_encoder": convert.convert_ldm_clip_checkpoint(checkpoint),
        "text_encoder_2": convert.convert_open_clip_checkpoint(pipe.text_encoder_2, checkpoint, prefix=CLIP_G_PREFIX),
    }
    for name, state in converted.items():
        assert shapes(state) == shapes(getattr(pipe, name).state_dict()), name
