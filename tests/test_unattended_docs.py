"""The documented nightly job runs: the README's crontab line, run with /bin/sh on the tiny model; the systemd
unit says the same command; the notify settings in configs/default.yaml are the code's."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.input.config import NOTIFY, NotifyConfig, load_notify
from pipeline.unattended.notify import SECRET_ENV
from tests.conftest import REPO
from tests.test_watch import events, metrics, named, one, receiver, rows  # noqa: F401 (receiver: a fixture)

README = (REPO / "README.md").read_text(encoding="utf-8")
UNATTENDED = (REPO / "docs" / "unattended.md").read_text(encoding="utf-8")


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def crontab_command(text: str) -> str:
    """The command of the one crontab entry: what follows the five time fields."""
    [block] = blocks(text, "cron")
    [entry] = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return entry.split(None, 5)[5]


def generate_args(command: str) -> list[str]:
    """The `layerdiffuse generate ...` part of a shell command line, without its redirections."""
    words = shlex.split(command.split(" && ")[-1])
    return [w for w in words[: words.index("2>>")] if w] if "2>>" in words else words


def exec_start(text: str) -> list[str]:
    [service] = [b for b in blocks(text, "ini") if "ExecStart=" in b]
    joined = re.sub(r"\\\n\s*", " ", service)
    [line] = [x for x in joined.splitlines() if x.startswith("ExecStart=")]
    return [re.sub(r"^\$\{(\w+)\}$", r"$\1", word) for word in shlex.split(line.removeprefix("ExecStart="))]


def env_file(text: str) -> dict[str, str]:
    [block] = [b for b in blocks(text, "bash") if f"{SECRET_ENV}=" in b]
    pairs = (line.split("=", 1) for line in block.splitlines() if line.strip() and not line.startswith("#"))
    return dict(pairs)


def test_the_systemd_service_runs_the_crontab_command_and_click_accepts_it():
    cron, unit = generate_args(crontab_command(README)), exec_start(README)
    assert cron == unit
    assert cron[0].endswith("/layerdiffuse") and cron[1] == "generate"
    values = {"$NOTIFY_URL": "https://hooks.example.com/x", "$PING_URL": "https://hc-ping.com/y"}
    args = [values.get(word, word) for word in cron[2:]]
    context = cli.commands["generate"].make_context("generate", args)
    params = context.params
    assert params["webhooks"] == ("https://hooks.example.com/x",) and params["ping"] == "https://hc-ping.com/y"
    assert params["log_format"] == "json" and params["metrics_file"].endswith(".prom")
    assert set(env_file(README)) == {SECRET_ENV, "NOTIFY_URL", "PING_URL"}


def test_docs_unattended_shows_the_readme_s_crontab_line_and_units():
    assert crontab_command(UNATTENDED) == crontab_command(README)
    assert set(blocks(UNATTENDED, "ini")) == set(blocks(README, "ini"))
    assert env_file(UNATTENDED) == env_file(README)


def test_the_readme_crontab_line_runs_on_the_tiny_model(receiver, tiny_config_file, tmp_path):  # noqa: F811
    documented = env_file(README)
    env = {**documented, "NOTIFY_URL": receiver.on("/hooks/nightly"), "PING_URL": receiver.on("/hc/uuid-1")}
    (tmp_path / "nightly.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    table = pa.table({"id": ["a", "b"], "prompt": ["a potion", "a shield"], "seed": [1, 2]})
    pq.write_table(table, tmp_path / "nightly.parquet")
    config = yaml.safe_load(tiny_config_file.read_text())
    config[NOTIFY] = {"metrics_labels": {"job": "nightly"}, "timeout": 2.0, "retries": 1, "backoff": 0.01}
    (tmp_path / "nightly.yaml").write_text(yaml.safe_dump(config))
    places = {
        "/etc/layerdiffuse/nightly.env": tmp_path / "nightly.env",
        "/srv/layerdiffuse/.venv/bin/layerdiffuse": Path(sys.executable).with_name("layerdiffuse"),
        "/srv/assets/nightly.parquet": tmp_path / "nightly.parquet",
        "/srv/assets/out/nightly": tmp_path / "out",
        "/etc/layerdiffuse/nightly.yaml": tmp_path / "nightly.yaml",
        "/var/lib/node_exporter/textfile_collector/layerdiffuse_nightly.prom": tmp_path / "nightly.prom",
        "/var/log/layerdiffuse/nightly.jsonl": tmp_path / "nightly.jsonl",
    }
    command = crontab_command(README)
    for documented_path, here in sorted(places.items(), key=lambda item: -len(item[0])):
        command = command.replace(documented_path, shlex.quote(str(here)))
    assert not re.search(r"(^|\s)/(srv|etc|var)/", command), f"a documented path has no stand-in: {command}"
    clean = {k: v for k, v in os.environ.items() if k not in env}  # the secret and URLs come from the file
    result = subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, capture_output=True, text=True,
                            env={**clean, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})  # fmt: skip
    log = events((tmp_path / "nightly.jsonl").read_text())
    assert result.returncode == 0, log[-3:]
    assert sorted(p.name for p in (tmp_path / "out" / "images").rglob("*.png")) == ["a.png", "b.png"]
    [posted] = receiver.hits("/hooks/nightly")
    signature = "sha256=" + hmac.new(documented[SECRET_ENV].encode(), posted["body"], hashlib.sha256).hexdigest()
    assert posted["headers"]["X-Signature-SHA256"] == signature
    doc = json.loads(posted["body"])
    assert (doc["status"], doc["counts"]["done"]) == ("ok", 2)
    assert [r["path"] for r in receiver.requests if r["path"].startswith("/hc/")] == ["/hc/uuid-1/start", "/hc/uuid-1"]
    parsed = metrics(tmp_path / "nightly.prom")
    assert rows(parsed, job="nightly")["done"] == 2 and one(parsed["layerdiffuse_exit_code"]) == 0
    assert named(log, "reported")[0]["run_id"] == doc["run_id"] and documented[SECRET_ENV] not in result.stderr


def test_default_config_shows_every_notify_setting_with_its_default():
    path = REPO / "configs" / "default.yaml"
    assert load_notify(path) == NotifyConfig()
    section = path.read_text().split(f"\n{NOTIFY}:")[1]
    for setting in fields(NotifyConfig):
        assert re.search(rf"^\s+{setting.name}:", section, re.M), setting.name


@pytest.mark.parametrize(
    ("notify", "expected"),
    [
        ({"ping": "hc-ping.com/uuid-secret"}, "notify.ping must be an http:// or https:// URL"),
        ({"webhooks": ["https://ok.example.com/a", "file:///etc/uuid-secret"]}, "notify.webhooks[1] must be"),
        ({"webhooks": "https://hooks.example.com/uuid-secret", "metrics_interval": 0}, "metrics_interval must be"),
        ({"metrics_file": "/var/lib/nightly.txt"}, "must be a file name ending in .prom"),
        ({"metrics_labels": {"bad-name": "x"}}, "label names must match"),
        ({"webhook": ["https://hooks.example.com/uuid-secret"]}, "unknown key(s) ['webhook']"),
    ],
)
def test_notify_mistakes_in_the_config_file_are_usage_errors(notify, expected, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({NOTIFY: notify}))
    (tmp_path / "t.csv").write_text("prompt\nx\n")
    args = ["generate", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"), "--config", str(config)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert expected in result.stderr and str(config) in result.stderr
    assert "uuid-secret" not in result.stderr
    assert not (tmp_path / "out").exists()
