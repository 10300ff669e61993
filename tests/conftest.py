"""Shared test helpers: the reference fixtures, one tiny model per session, small fast configs."""

# Environment first, before anything imports huggingface_hub, transformers or diffusers: they read these
# variables once, at import time. Each test process gets its own empty caches, removed when it exits.
import atexit
import os
import shutil
import tempfile

_SCRATCH = tempfile.mkdtemp(prefix="layerdiffuse-tests-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ.update(
    {
        "HF_HOME": os.path.join(_SCRATCH, "hf-home"),  # an empty Hugging Face cache: nothing is "already there"
        "HF_HUB_OFFLINE": "1",  # tests never touch the network
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "LAYERDIFFUSE_CACHE": os.path.join(_SCRATCH, "layerdiffuse-cache"),  # weight-hash cache (fingerprint.py)
    }
)
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Parallel workers share the CPUs: each gets its share of torch threads (more would only contend).
    _cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cpus // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import json  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "layerdiffuse"  # how they were made: README.md there


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        raise FileNotFoundError(f"reference fixture {path} is missing (it is part of the repository)")
    return path


def fixture_json(name: str):
    return json.loads(fixture_path(name).read_text())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from pipeline.model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_config(tiny_model_dir):
    """Tiny model, 64x64, 2 steps, batch 2: every run takes about a second."""
    from pipeline.input.config import Config, Defaults, ModelConfig, RunConfig

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

    from pipeline.input.config import as_dict

    path = tmp_path_factory.mktemp("configs") / "tiny-test.yaml"
    data = as_dict(tiny_config)
    data["run"] = {k: v for k, v in data["run"].items() if v is not None}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """One model for the whole session, read-only: tests that load LoRAs into a model build their own."""
    from pipeline.model import load_model

    return load_model(tiny_config.model)


@pytest.fixture(autouse=True)
def shared_model_left_as_loaded(request):
    """A test that changes the shared model (adapters, unfrozen weights) fails, not the tests after it."""
    yield
    if "tiny_model" in request.fixturenames:
        pipe = request.getfixturevalue("tiny_model").pipe
        for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
            component = getattr(pipe, name)
            assert not any(hasattr(m, "lora_A") for m in component.modules()), f"{name} was left with adapters"
            assert not any(p.requires_grad for p in component.parameters()), f"{name} was left unfrozen"


def with_run(config, **values):
    return replace(config, run=replace(config.run, **values))
