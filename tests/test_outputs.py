"""Output files as a shared disk expects them, and a run without network that fails fast and says why."""

import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_output_files_get_the_usual_permissions(umask, tmp_path, tiny_config_file):
    (tmp_path / "t.csv").write_text("prompt\na lamp\n")
    command = [sys.executable, "-m", "pipeline", "generate", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"),
               "--config", str(tiny_config_file), "--report"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, preexec_fn=lambda: os.umask(umask),
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert {p.name for p in files} >= {"row-000001.png", "manifest.jsonl", "manifest.parquet", "run.json",
                                       "report.html", "contact_sheet.png"}  # fmt: skip
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_without_network_a_missing_model_is_reported_at_once_and_names_hf_hub_offline(tmp_path):
    (tmp_path / "t.csv").write_text("prompt\na lamp\n")
    closed = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "pipeline", "generate", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **closed},
                            timeout=120)  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "model files are missing" in result.stderr and "HF_HUB_OFFLINE=1" in result.stderr
    assert "stabilityai/stable-diffusion-xl-base-1.0" in result.stderr and "Retrying" not in result.stderr
