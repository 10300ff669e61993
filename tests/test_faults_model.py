"""Faults around the model and its labels: a mistyped `--model` with the tiny config, the tiny model's file
modes, LoRA alpha kept in a file's metadata, the `Schedule type` AUTOMATIC1111 reads back, combinatorial
templates too large to list, and wildcards that reach outside their folder."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.model.sources import tiny_root
from pipeline.storage import FILE_MODE
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
    from pipeline.model.tiny import build_tiny_model

    root = build_tiny_model(tmp_path / "tiny")
    modes = {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}
    files = {name: mode for name, mode in modes.items() if (root / name).is_file()}
    assert set(files.values()) == {FILE_MODE}, files  # 0666 less the umask, weights included
    folders = {name: mode for name, mode in modes.items() if (root / name).is_dir()}
    assert all(mode & 0o700 == 0o700 and mode & FILE_MODE == FILE_MODE for mode in folders.values()), folders
    assert os.access(root / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors", os.R_OK)
