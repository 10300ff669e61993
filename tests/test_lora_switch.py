"""Switching LoRA sets leaves the base bit-exact: a row's bytes never depend on which sets ran before it in
the same process. Every side runs in processes of its own with one intra-op thread, so the only thing that
differs between the two sides is what ran earlier."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.model.testing.tiny_lora import build_tiny_lora
from tests.conftest import REPO

# none, A:1, B:0.5, none, A:0, A+B, none: every kind of switch, and "none" after each of them
SEQUENCE = ["none", "A:1", "B:0.5", "none", "A:0", "A:1+B:1", "none"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_all(commands: list[list[str]]) -> list[str]:
    """Run the commands at once (fresh processes), return their standard outputs; any failure fails the test."""
    procs = [subprocess.Popen(c, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


@pytest.fixture(scope="module")
def two_loras(tiny_model, tmp_path_factory):
    """A (kohya, with text-encoder and conv layers) and B (PEFT), other random factors."""
    folder = tmp_path_factory.mktemp("switch-loras")
    return (build_tiny_lora(tiny_model.pipe, folder / "a.safetensors", "kohya", seed=1),
            build_tiny_lora(tiny_model.pipe, folder / "b.safetensors", "peft", seed=2))  # fmt: skip


def test_each_set_in_one_process_gives_the_bytes_it_gives_alone(tiny_model_dir, two_loras):
    script = [sys.executable, "-m", "tests.model.render_lora_sets", str(tiny_model_dir), *map(str, two_loras)]
    distinct = list(dict.fromkeys(SEQUENCE))
    together, *alone = run_all([script + [",".join(SEQUENCE)]] + [script + [spec] for spec in distinct])
    fresh = {spec: json.loads(out)[0] for spec, out in zip(distinct, alone, strict=True)}
    assert json.loads(together) == [fresh[spec] for spec in SEQUENCE]
    assert fresh["A:0"] == fresh["none"]  # weight 0 is no LoRA, bit for bit
    assert len({fresh[s] for s in ("none", "A:1", "B:0.5", "A:1+B:1")}) == 4  # and every other set changes pixels


def generate(table: Path, out: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "generate", str(table), "--out", str(out), "--config", str(config),
            "--no-tta", "--batch-size", "1", "--log-format", "json"]  # fmt: skip


def test_a_loras_column_alternating_sets_across_batches_gives_each_row_its_bytes_alone(
    tiny_config_file, two_loras, tmp_path
):
    a, b = two_loras
    cells = {"none": "", "A:1": f"{a}:1", "B:0.5": f"{b}:0.5", "A:0": f"{a}:0", "A:1+B:1": f"{a}:1; {b}:1"}
    # one batch per row; batches group rows by set in order of first appearance: A:1, none x3, B:0.5, A:0, A+B
    rows = [(f"r{i}", spec) for i, spec in enumerate(["A:1", "none", "B:0.5", "none", "A:0", "A:1+B:1", "none"])]

    def write(path: Path, chosen) -> Path:
        lines = "".join(f'{key},a pixel-art sword,7,"{cells[spec]}"\n' for key, spec in chosen)
        path.write_text("id,prompt,seed,loras\n" + lines)
        return path

    commands = [generate(write(tmp_path / "all.csv", rows), tmp_path / "together", tiny_config_file)]
    for spec in dict.fromkeys(SEQUENCE):  # each set's rows alone, in a fresh process
        name = hashlib.sha256(spec.encode()).hexdigest()[:8]
        chosen = [row for row in rows if row[1] == spec]
        commands.append(generate(write(tmp_path / f"{name}.csv", chosen), tmp_path / name, tiny_config_file))
    run_all(commands)
    manifest = (tmp_path / "together" / "manifest.jsonl").read_text()
    together = {r["id"]: r for r in map(json.loads, manifest.splitlines())}
    ran = [spec for _, spec in sorted((together[k]["batch_index"], spec) for k, spec in rows)]
    assert ran == ["A:1", "none", "none", "none", "B:0.5", "A:0", "A:1+B:1"]  # none after a LoRA, A:0 after B
    for key, spec in rows:
        alone = tmp_path / hashlib.sha256(spec.encode()).hexdigest()[:8] / "images" / "00000" / f"{key}.png"
        assert together[key]["status"] == "ok"
        assert (tmp_path / "together" / "images" / "00000" / f"{key}.png").read_bytes() == alone.read_bytes(), key
