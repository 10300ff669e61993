"""PNG text that galleries and prompt readers show: read back with an independent reader (sd-parsers)."""

import pytest
from click.testing import CliRunner
from PIL import Image
from sd_parsers import ParserManager

from pipeline.cli import cli
from pipeline.schedulers import SCHEDULERS

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
