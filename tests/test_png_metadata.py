"""PNG text that galleries and prompt readers show: read back with an independent reader (sd-parsers)."""

import hashlib
import json
import re
import shutil
import struct

import pytest
from click.testing import CliRunner
from PIL import Image
from sd_parsers import ParserManager

from pipeline.cli import cli
from pipeline.input.schedulers import SCHEDULERS
from pipeline.model.testing.tiny import SINGLE_FILE
from pipeline.model.testing.tiny_lora import build_tiny_lora

SEED = 18446744073709551615  # 2^64 - 1: the largest seed a row may have


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_is_named_as_automatic1111_writes_it(name, tmp_path, tiny_config_file):
    (tmp_path / "t.csv").write_text(f"id,prompt,seed,guidance_scale,width\nx,a glass orb,{SEED},6.5,128\n")
    args = ["generate", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"), "--config", str(tiny_config_file),
            "--scheduler", name, "--num-inference-steps", "3"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    png = tmp_path / "out" / "images" / "00000" / "x.png"
    with Image.open(png) as image:
        assert image.size == (128, 64)
    info = ParserManager().parse(str(png))
    sampler = info.samplers[0]
    expected = SCHEDULERS[name]
    assert sampler.name == expected.sampler
    assert sampler.parameters["steps"] == "3" and sampler.parameters["cfg_scale"] == "6.5"
    assert sampler.parameters["seed"] == str(SEED)
    assert info.metadata["Size"] == "128x64"
    assert sampler.prompts[0].value == "a glass orb"
    schedule = info.raw_parameters["parameters"]
    assert ("Schedule type: Karras" in schedule) == (expected.schedule_type == "Karras")


def a1111_fields(text: str) -> dict[str, str]:
    """The last line of `parameters` read by AUTOMATIC1111's rule: `Key: value` pairs split at commas, a value
    holding ',', ':' or a newline written as a JSON string (sd-parsers splits quoted values apart)."""
    line = text.strip().splitlines()[-1]
    pairs = re.findall(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)', line)
    return {key: json.loads(value) if value.startswith('"') else value for key, value in pairs}


def test_checkpoint_vae_and_lora_hashes_read_back(tmp_path, tiny_config_file, tiny_model_dir, tiny_model):
    lora = build_tiny_lora(tiny_model.pipe, tmp_path / "pixel-art.safetensors", "kohya", seed=1)
    checkpoint = tiny_model_dir / SINGLE_FILE
    vae = tmp_path / "xl_vae.safetensors"  # the tiny VAE's weights as one file, diffusers names
    shutil.copy(tiny_model_dir / "sdxl" / "vae" / "diffusion_pytorch_model.safetensors", vae)
    (tmp_path / "t.csv").write_text("id,prompt,seed\nx,a glass orb,5\n")
    args = ["generate", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"), "--config", str(tiny_config_file),
            "--model", str(checkpoint), "--base-config", str(tiny_model_dir / "sdxl"), "--vae", str(vae),
            "--lora", f"{lora}:0.8", "--no-tta"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    png = tmp_path / "out" / "images" / "00000" / "x.png"
    info = ParserManager().parse(str(png))
    sampler = info.samplers[0]
    model_sha, vae_sha = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (checkpoint, vae))
    assert (sampler.model.name, sampler.model.hash) == ("sdxl-tiny", model_sha[:10])
    assert sampler.prompts[0].value == "a glass orb <lora:pixel-art:0.8>"  # the tag on the prompt line only
    assert (info.metadata["VAE hash"], info.metadata["VAE"]) == (vae_sha[:10], "xl_vae.safetensors")
    data = lora.read_bytes()
    tensors = hashlib.sha256(data[8 + struct.unpack("<Q", data[:8])[0] :]).hexdigest()
    fields = a1111_fields(info.raw_parameters["parameters"])
    assert fields["Lora hashes"] == f"pixel-art: {tensors[:12]}"
    assert (fields["Model hash"], fields["Model"], fields["Seed"]) == (model_sha[:10], "sdxl-tiny", "5")
    with Image.open(png) as image:
        assert image.text["prompt"] == "a glass orb"
