"""A row's request identity: every setting that changes pixels is in it, and nothing else."""

import shutil
from dataclasses import fields, replace

import pytest

from pipeline.input.config import Config
from pipeline.input.rows import Row
from pipeline.model.sources import resolve_sources
from pipeline.plan.identity import LOW_BITS, NEUTRAL, REDO, ROW_LEVEL, request_identity

ROW = Row(number=1, key="a", prompt="p", negative_prompt="n", seed=1, guidance_scale=8.0, num_inference_steps=2,
          width=64, height=64, enable_safety_checker=False)  # fmt: skip
CHANGES = {  # a different valid value for each setting that is not a weight location
    "model.injection": "conv",
    "model.strength": 0.5,
    "model.scheduler": "euler_a",
    "model.dtype": "bfloat16",
    "model.vae_tiling": True,
    "model.variant": "fp16",
    "run.tta": False,
    "model.device": "cuda:1",
    "model.compile": True,
    "model.channels_last": True,
    "run.batch_size": 7,
    "run.decoder_sub_batch": 3,
    "run.png_compress_level": 1,
    "run.writer_threads": 2,
    "run.limit": 1,
    "run.max_failures": 0,
    "run.overwrite": True,
    "run.strict": True,
    "run.log_format": "json",
    "model.build_tiny_if_missing": True,
    "defaults.num_images": 4,
    "templates.combinatorial": True,
    "templates.wildcards": "/elsewhere",  # not checked here: the identity never looks at it
    "templates.combination_limit": 5,
    "sprites.trim": True,
    "sprites.alpha_threshold": 8,
    "sprites.pad": 2,
    "sprites.square": True,
    "sprites.pot": True,
    "sprites.sizes": (64, 32),
    "sprites.bleed": True,
    "sprites.premultiplied": True,
}


def settings_of(config: Config) -> set[str]:
    return {f"{section.name}.{f.name}" for section in fields(config) for f in fields(getattr(config, section.name))}


def changed(config: Config, name: str, value) -> Config:
    section, key = name.split(".")
    return replace(config, **{section: replace(getattr(config, section), **{key: value})})


def request_hash(config: Config, row: Row = ROW) -> str:
    return request_identity(config, resolve_sources(config.model)).request_hash(row)


def test_every_setting_is_in_exactly_one_group(tiny_config):
    groups = [set(REDO), set(ROW_LEVEL), set(LOW_BITS), set(NEUTRAL)]
    assert set().union(*groups) == settings_of(tiny_config)
    assert sum(map(len, groups)) == len(settings_of(tiny_config)), "a setting is listed twice"


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_setting_redoes_rows_exactly_when_it_changes_pixels(name, tiny_config):
    before, after = request_hash(tiny_config), request_hash(changed(tiny_config, name, CHANGES[name]))
    assert (before != after) == (name in REDO)


def test_every_sprite_setting_is_post_processing_only(tiny_config):
    """Sprites are derived from the written canvas: no sprite setting is in the request (a new one must be added)."""
    sprite_settings = {name for name in settings_of(tiny_config) if name.startswith("sprites.")}
    assert sprite_settings == {name for name in CHANGES if name.startswith("sprites.")}
    assert sprite_settings <= set(NEUTRAL)
    everything = tiny_config
    for name in sorted(sprite_settings - {"sprites.premultiplied"}):  # bleed and premultiplied exclude each other
        everything = changed(everything, name, CHANGES[name])
    assert request_hash(everything) == request_hash(tiny_config)


def test_weights_count_by_content_not_by_place(tiny_config, tiny_model_dir, tmp_path):
    moved = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere")
    config = replace(tiny_config, model=replace(tiny_config.model, base=str(moved / "sdxl"),
                                                layerdiffuse=str(moved / "layerdiffusion-v1")))  # fmt: skip
    assert request_hash(config) == request_hash(tiny_config)
    decoder = moved / "layerdiffusion-v1" / "vae_transparent_decoder.safetensors"
    data = bytearray(decoder.read_bytes())
    data[-1] ^= 1
    decoder.write_bytes(bytes(data))
    assert request_hash(config) != request_hash(tiny_config)
    vae = moved / "sdxl" / "vae" / "diffusion_pytorch_model.safetensors"
    assert request_hash(replace(config, model=replace(config.model, vae=str(vae.parent)))) != request_hash(config)


def test_the_safety_checker_counts_only_for_rows_that_ask_for_it(tiny_config, tiny_model_dir, tmp_path):
    other = shutil.copytree(tiny_model_dir / "safety-checker", tmp_path / "checker")
    (other / "config.json").write_text((other / "config.json").read_text().replace("}", ', "note": 1}', 1))
    checked = replace(ROW, enable_safety_checker=True)
    a = request_identity(tiny_config, resolve_sources(tiny_config.model, safety_checker=True))
    changed_checker = changed(tiny_config, "model.safety_checker", str(other))
    b = request_identity(changed_checker, resolve_sources(changed_checker.model, safety_checker=True))
    assert a.request_hash(ROW) == b.request_hash(ROW)
    assert a.request_hash(checked) != b.request_hash(checked)
