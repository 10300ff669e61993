"""Shared test helpers: the reference fixtures, one tiny model per session, small fast configs."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LAYERDIFFUSE_FIXTURES", REPO.parent / "shared" / "layerdiffuse" / "fixtures"))


def fixture_path(name: str) -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {FIXTURES} (../shared beside the repo root)")
    return FIXTURES / name


def fixture_json(name: str):
    return json.loads(fixture_path(name).read_text())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from pipeline.model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_config(tiny_model_dir):
    """Tiny model, 64x64, 2 steps, batch 2: every run takes about a second."""
    from pipeline.config import Config, Defaults, ModelConfig, RunConfig

    return Config(
        model=ModelConfig(
            base=str(tiny_model_dir / "sdxl"),
            layerdiffuse=str(tiny_model_dir / "layerdiffusion-v1"),
            safety_checker=str(tiny_model_dir / "safety-checker"),
            dtype="float32",
            device="cpu",
        ),
        defaults=Defaults(width=64, height=64, num_inference_steps=2, enable_safety_checker=False),
        run=RunConfig(batch_size=2),
    )


@pytest.fixture(scope="session")
def tiny_config_file(tiny_config, tmp_path_factory) -> Path:
    """The same settings as a YAML file, for command-line tests."""
    import yaml

    from pipeline.config import as_dict

    path = tmp_path_factory.mktemp("configs") / "tiny-test.yaml"
    data = as_dict(tiny_config)
    data["run"] = {k: v for k, v in data["run"].items() if v is not None}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    from pipeline.model import load_model

    return load_model(tiny_config.model)


def with_run(config, **values):
    return replace(config, run=replace(config.run, **values))
