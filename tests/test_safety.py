"""The safety checker: on by default per row, flagged images become transparent placeholders."""

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.input.config import as_dict
from pipeline.model.safety import build_tiny_safety_checker, composite_on_grey

TABLE = "id,prompt,enable_safety_checker\na,first,\nb,second,true\nc,third,false\n"


@pytest.fixture(scope="module")
def checkers(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkers")
    return {flag: build_tiny_safety_checker(root / f"flag-{flag}", flag_everything=flag) for flag in (True, False)}


def config_file(tmp_path, tiny_config, checker, **defaults):
    config = replace(tiny_config, model=replace(tiny_config.model, safety_checker=str(checker)))
    config = replace(config, defaults=replace(config.defaults, enable_safety_checker=True, **defaults))
    data = as_dict(config)
    data["run"] = {k: v for k, v in data["run"].items() if v is not None}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def generate(tmp_path, config, *extra, table=TABLE):
    (tmp_path / "t.csv").write_text(table)
    args = ["generate", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"), "--config", str(config)]
    result = CliRunner().invoke(cli, [*args, "--log-format", "json", *extra])
    events = [json.loads(line) for line in result.stderr.splitlines()]
    return result, events


def records(tmp_path):
    lines = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def pixels(tmp_path, key):
    with Image.open(tmp_path / "out" / "images" / "00000" / f"{key}.png") as image:
        return image.mode, image.size, np.asarray(image)


def test_checker_that_flags_everything_blanks_only_rows_that_ask(tmp_path, tiny_config, checkers):
    result, events = generate(tmp_path, config_file(tmp_path, tiny_config, checkers[True]))
    assert result.exit_code == 0, result.stderr
    by_id = records(tmp_path)
    assert {k: r["has_nsfw_concepts"] for k, r in by_id.items()} == {"a": True, "b": True, "c": None}
    assert {k: r["enable_safety_checker"] for k, r in by_id.items()} == {"a": True, "b": True, "c": False}
    for key in "ab":
        mode, size, data = pixels(tmp_path, key)
        assert mode == "RGBA" and size == (64, 64) and not data.any()  # fully transparent placeholder
    assert pixels(tmp_path, "c")[2][..., 3].any()
    summary = next(e for e in events if e["event"] == "summary")
    assert summary["flagged"] == 2 and summary["ok"] == 3


def test_checker_that_flags_nothing_keeps_the_images(tmp_path, tiny_config, checkers):
    result, events = generate(tmp_path, config_file(tmp_path, tiny_config, checkers[False]))
    assert result.exit_code == 0, result.stderr
    assert {k: r["has_nsfw_concepts"] for k, r in records(tmp_path).items()} == {"a": False, "b": False, "c": None}
    assert all(pixels(tmp_path, key)[2][..., 3].any() for key in "abc")
    assert next(e for e in events if e["event"] == "summary")["flagged"] == 0


def test_checker_is_never_loaded_when_no_row_needs_it(tmp_path, tiny_config):
    absent = tmp_path / "no-checker-here"
    config = config_file(tmp_path, tiny_config, absent)
    result, _ = generate(tmp_path, config, "--no-safety-checker")
    assert result.exit_code == 0, result.stderr
    assert {r["has_nsfw_concepts"] for r in records(tmp_path).values()} == {None}
    assert {r["enable_safety_checker"] for r in records(tmp_path).values()} == {False}
    opted_out = "prompt,enable_safety_checker\nx,false\ny,no\n"
    (tmp_path / "second").mkdir()
    result, _ = generate(tmp_path / "second", config, table=opted_out)
    assert result.exit_code == 0, result.stderr


def test_missing_checker_fails_before_generation_with_both_ways_out(tmp_path, tiny_config):
    absent = tmp_path / "no-checker-here"
    result, events = generate(tmp_path, config_file(tmp_path, tiny_config, absent))
    assert result.exit_code == 4
    error = events[-1]["message"]
    assert f"safety checker: {absent}" in error and "--no-safety-checker" in error
    assert "model_loaded" not in {e["event"] for e in events}
    assert not list((tmp_path / "out" / "images").rglob("*.png"))


def test_uncached_default_checker_offline_is_named(tmp_path, tiny_config):
    # conftest points HF_HOME at an empty cache and sets HF_HUB_OFFLINE before any library import
    result, events = generate(tmp_path, config_file(tmp_path, tiny_config, "CompVis/stable-diffusion-safety-checker"))
    assert result.exit_code == 4
    assert "hub repo CompVis/stable-diffusion-safety-checker" in events[-1]["message"]


def test_transparent_pixels_are_judged_over_neutral_grey():
    rgba = np.array([[[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128]]]], dtype=np.uint8)
    rgb = composite_on_grey(rgba)
    assert rgb[0, 0].tolist() == [[255, 0, 0], [127, 127, 127], [63, 63, 191]]


def test_grey_composite_is_exact_for_every_colour_and_alpha():
    """Integer maths, checked against exact rounding and against the float32 formula it replaced."""
    colour, alpha = (x.astype(np.int64) for x in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    rgba = np.stack([colour, 255 - colour, colour[::-1], alpha], axis=-1).astype(np.uint8)[None]
    numerator = rgba[..., :3].astype(np.int64) * alpha[None, ..., None] + 127 * (255 - alpha[None, ..., None])
    exact = (2 * numerator + 255) // 510  # round(numerator / 255), halves up (none occur)
    share = rgba[..., 3:].astype(np.float32) / 255
    as_floats = np.round(rgba[..., :3].astype(np.float32) * share + 127 * (1 - share)).astype(np.uint8)
    composite = composite_on_grey(rgba)
    assert composite.dtype == np.uint8 and composite.shape == (1, 256, 256, 3)
    assert np.array_equal(composite, exact) and np.array_equal(composite, as_floats)
