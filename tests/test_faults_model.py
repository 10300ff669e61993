"""Faults around the model and its labels: a mistyped `--model` with the tiny config, the tiny model's file
modes, LoRA alpha kept in a file's metadata, the `Schedule type` AUTOMATIC1111 reads back, combinatorial
templates too large to list, and wildcards that reach outside their folder."""

from __future__ import annotations

import io
import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.common.storage import FILE_MODE
from pipeline.input.config import load_config
from pipeline.input.schedulers import SCHEDULER_NAMES, SCHEDULERS
from pipeline.model.sources import tiny_root
from tests.conftest import REPO

# ---------------------------------------------------------------- the tiny model is built only at its own path


@pytest.mark.parametrize("typo", ["modles/juggernautXL.safetensors", "modles/sdxl"])  # a file; a diffusers folder
def test_a_mistyped_model_with_the_tiny_config_is_exit_4_and_builds_nothing(typo, tmp_path):
    config = tmp_path / "configs" / "tiny.yaml"
    config.parent.mkdir()
    shutil.copy(REPO / "configs" / "tiny.yaml", config)  # its tiny model would be tmp_path/models/tiny
    (tmp_path / "t.csv").write_text("id,prompt\na,an orb\n")
    typo = tmp_path / typo
    args = ["generate", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"), "--config", str(config),
            "--model", str(typo)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 4, result.output
    assert "model files are missing" in result.stderr and f"SDXL base model: {typo} (no such file" in result.stderr
    assert not (tmp_path / "modles").exists() and not (tmp_path / "models").exists()  # no random weights anywhere


def test_the_tiny_config_names_its_own_root_and_nothing_else_does(tmp_path):
    model = load_config(REPO / "configs" / "tiny.yaml").model
    assert tiny_root(model) == REPO / "models" / "tiny"
    assert tiny_root(model.__class__(**{**vars(model), "base": str(tmp_path / "sdxl")})) is None
    assert tiny_root(load_config(None).model) is None


def test_the_tiny_models_files_have_the_usual_permissions(tmp_path):
    from pipeline.model.testing.tiny import build_tiny_model

    root = build_tiny_model(tmp_path / "tiny")
    modes = {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}
    files = {name: mode for name, mode in modes.items() if (root / name).is_file()}
    assert set(files.values()) == {FILE_MODE}, files  # 0666 less the umask, weights included
    folders = {name: mode for name, mode in modes.items() if (root / name).is_dir()}
    assert all(mode & 0o700 == 0o700 and mode & FILE_MODE == FILE_MODE for mode in folders.values()), folders
    assert os.access(root / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors", os.R_OK)


# ---------------------------------------------------------------- Schedule type as AUTOMATIC1111 reads it back

# AUTOMATIC1111 (modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py): each sampler's own schedule, the
# one `Automatic` (and a missing `Schedule type`) means; None for the samplers that run on their own timesteps.
A1111_DEFAULT_SCHEDULE = {"Euler": "uniform", "Euler a": "uniform", "DPM++ 2M": "karras", "DDIM": None, "UniPC": None}
# modules/sd_schedulers.py: label -> name, for the schedules diffusers can run here.
A1111_SCHEDULES = {"Automatic": "automatic", "Uniform": "uniform", "Karras": "karras"}


def a1111_schedule(fields: dict[str, str]) -> str | None:
    """Which sigmas AUTOMATIC1111 runs for these infotext fields (its get_sampler_and_scheduler, then the
    sampler's own schedule for `Automatic`)."""
    default = A1111_DEFAULT_SCHEDULE[fields["Sampler"]]
    chosen = A1111_SCHEDULES[fields.get("Schedule type", "Automatic")]
    return default if chosen == "automatic" or default is None else chosen


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_writes_the_schedule_type_automatic1111_maps_back_to_what_ran(name, tiny_model_dir):
    import diffusers
    import numpy as np
    from PIL import Image

    from pipeline.input.rows import Row
    from pipeline.run.png import PngSettings, encode_png
    from tests.test_png_metadata import a1111_fields

    chosen = SCHEDULERS[name]
    config = diffusers.EulerDiscreteScheduler.load_config(tiny_model_dir / "sdxl" / "scheduler")
    ran = getattr(diffusers, chosen.diffusers_class).from_config(config, **chosen.options)  # as loading.py does
    row = Row(1, "a", "an orb", "text", 1, 8.0, 20, 64, 64, False)
    data = encode_png(np.zeros((64, 64, 4), np.uint8), row, PngSettings("tiny", chosen))
    with Image.open(io.BytesIO(data)) as image:
        fields = a1111_fields(image.text["parameters"])
    expected = None if chosen.timesteps else "karras" if ran.config.get("use_karras_sigmas") else "uniform"
    assert a1111_schedule(fields) == expected, fields
    assert ("Schedule type" in fields) == (not chosen.timesteps)


# ---------------------------------------------------------------- a LoRA's alpha kept in its file's metadata

RANK, ALPHA = 4, 2  # scale alpha / rank = 0.5: exact in binary, so the folded factors are the same numbers


@pytest.fixture(scope="module")
def lora_model(tiny_config):
    """A model of its own: loading adapters wraps its layers, which the shared session model must not see."""
    from pipeline.model import load_model

    return load_model(tiny_config.model)


def unet_factors(pipe, folder: Path) -> dict:
    """Seeded random factors of every targeted UNet layer, as diffusers names them (no `unet.` prefix)."""
    from safetensors.torch import load_file

    from pipeline.model.testing.tiny_lora import build_tiny_lora

    path = build_tiny_lora(pipe, folder / "unscaled.safetensors", "peft", seed=1, rank=RANK)  # alpha = rank
    return {k.removeprefix("unet."): v for k, v in load_file(path).items() if k.startswith("unet.")}


def test_a_diffusers_lora_with_its_alpha_only_in_the_metadata_runs_at_alpha_over_rank(lora_model, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pipeline.input.lora_refs import LoraRef
    from pipeline.model import LoraAdapters, generate_rgba
    from pipeline.model.lora_files import resolve_lora
    from tests.model.files import Req

    factors = unet_factors(lora_model.pipe, tmp_path)
    targets = sorted({k.rsplit(".lora_", 1)[0] for k in factors})
    metadata = {"r": RANK, "lora_alpha": ALPHA, "target_modules": targets}
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "saved", unet_lora_layers=factors,
                                                unet_lora_adapter_metadata=metadata)  # fmt: skip
    saved = tmp_path / "saved" / "pytorch_lora_weights.safetensors"
    with safe_open(saved, "pt") as file:
        assert '"unet.lora_alpha": 2' in file.metadata()["lora_adapter_metadata"]  # the alpha is only there
    folded = {f"unet.{k}": v * (ALPHA / RANK) if ".lora_B." in k else v for k, v in factors.items()}
    save_file(folded, tmp_path / "folded.safetensors")

    adapters, row = LoraAdapters(lora_model.pipe), [Req("a pixel-art sword", 7, num_inference_steps=1)]

    def render(*paths) -> np.ndarray:
        adapters.activate([resolve_lora(LoraRef.parse(str(p))) for p in paths])
        return generate_rgba(lora_model, row, tta=False)

    plain, with_metadata, with_folded = render(), render(saved), render(tmp_path / "folded.safetensors")
    assert not np.array_equal(with_folded, plain)  # the LoRA changes the image...
    np.testing.assert_array_equal(with_metadata, with_folded)  # ...by alpha / rank, as its metadata says


# ---------------------------------------------------------------- templates: too many combinations, bad wildcards


def validate(tmp_path, prompt: str, *extra: str):
    (tmp_path / "t.csv").write_text(f'id,prompt\na,"{prompt}"\n')
    return CliRunner().invoke(cli, ["validate", str(tmp_path / "t.csv"), *extra])


def test_combinations_are_counted_before_they_are_listed(tmp_path):
    started = time.monotonic()
    result = validate(tmp_path, "{a|b|c} " * 30, "--combinatorial", "--combination-limit", "1000000")
    assert result.exit_code == 3, result.output  # the row is invalid, at once
    assert "row 1, column 'prompt'" in result.output and "gives 205,891,132,094,649 prompts" in result.output
    assert time.monotonic() - started < 20
    huge = validate(tmp_path, "{a|b|c} " * 30, "--combinatorial", "--combination-limit", str(10**12))
    assert huge.exit_code == 2 and "1<=x<=1000000" in huge.output  # a limit that could list for hours


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [("{a|b|c} {d|e} x", 6), ("{a|a|b} and {c|d}", 4), ("{2$$a|b|c}", 6), ("{a|{b|c}} {~d|e}", 3)],
)
def test_the_count_agrees_with_the_listing(prompt, prompts, tmp_path):
    from pipeline.input.templates import TemplateError, expand_all

    assert len(expand_all(prompt, limit=prompts)) == prompts  # counted or listed: never refused wrongly
    with pytest.raises(TemplateError, match=f"more than (the combination limit )?{prompts - 1}"):
        expand_all(prompt, limit=prompts - 1)


def test_a_wildcard_reaching_outside_its_folder_is_one_clear_line(tmp_path):
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "secret.txt").write_text("do not read\n")
    result = validate(tmp_path, "a __../secret__ orb", "--wildcards", str(tmp_path / "wildcards"))
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.stderr and "Invalid wildcard" not in result.stderr, result.stderr
    [line] = [x for x in result.output.splitlines() if "__../secret__" in x]
    assert "row 1, column 'prompt'" in line and "is refused" in line and "'..'" in line
