"""Faults of unattended runs: real signals at the moments between taking the folder and the first batch, a
second Ctrl-C, and webhook URLs with credentials, all against a real HTTP server on 127.0.0.1 and real
subprocesses of `layerdiffuse generate` on the tiny model."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from pipeline.common.faults import ENV
from pipeline.unattended.notify import ping, post_webhooks
from tests.conftest import REPO
from tests.test_notify import Receiver, make_report
from tests.test_watch import metrics, one

ROWS = 4


@pytest.fixture
def receiver():
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def setup(tiny_config_file, tmp_path, receiver, *extra):
    """The command of a reported run of ROWS rows (tta off, quick retries), and its metrics file."""
    data = yaml.safe_load(tiny_config_file.read_text())
    data["run"]["tta"] = False
    data["notify"] = {"timeout": 2.0, "retries": 1, "backoff": 0.01}
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump(data))
    table = tmp_path / "t.csv"
    table.write_text("id,prompt,seed\n" + "".join(f"r{i},sprite {i},{i}\n" for i in range(ROWS)))
    prom = tmp_path / "m.prom"
    command = [sys.executable, "-m", "pipeline", "generate", str(table), "--out", str(tmp_path / "out"),
               "--config", str(config), "--log-format", "json", "--notify", receiver.on("/hook"),
               "--ping", receiver.on("/hc"), "--metrics-file", str(prom), *extra]  # fmt: skip
    return command, prom


def env(**extra):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def assert_reported_interrupted(receiver, prom, stderr: str) -> dict:
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr[-3000:]
    [posted] = receiver.hits("/hook")
    doc = json.loads(posted["body"])
    assert (doc["status"], doc["exit_code"]) == ("interrupted", 130)
    assert [r["path"] for r in receiver.requests] == ["/hc/start", "/hc/fail", "/hook"]
    after = metrics(prom)
    assert one(after["layerdiffuse_running"]) == 0 and one(after["layerdiffuse_exit_code"]) == 130
    return doc


@pytest.mark.parametrize(
    ("moment", "signame"),
    [("planned", "SIGTERM"), ("planned", "SIGINT"), ("keys_written", "SIGTERM"), ("model_loaded", "SIGINT")],
)
def test_a_signal_between_taking_the_folder_and_the_first_batch_is_reported_and_exits_130(
    moment, signame, tiny_config_file, tmp_path, receiver
):
    command, prom = setup(tiny_config_file, tmp_path, receiver)
    result = subprocess.run(command, cwd=REPO, env=env(**{ENV: f"{moment}:1:{signame}"}), capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 130, result.stderr[-3000:]
    doc = assert_reported_interrupted(receiver, prom, result.stderr)
    assert doc["counts"]["done"] == 0 and not list((tmp_path / "out").rglob("*.png"))
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e["event"] in ("stopping", "interrupted")] == ["stopping", "interrupted"]
    assert not any(e["event"] == "model_loaded" for e in events) or moment == "model_loaded"  # no model loaded


def test_a_second_ctrl_c_aborts_with_130_and_is_reported(tiny_config_file, tmp_path, receiver):
    command, prom = setup(tiny_config_file, tmp_path, receiver, "--batch-size", "1", "--num-inference-steps", "60")
    process = subprocess.Popen(command, cwd=REPO, env=env(), stderr=subprocess.PIPE, text=True)
    lines = iter(process.stderr)
    assert next(line for line in lines if '"batch_done"' in line)
    process.send_signal(signal.SIGINT)
    assert next(line for line in lines if '"stopping"' in line)  # the first Ctrl-C was heard
    process.send_signal(signal.SIGINT)
    rest = "".join(lines)
    assert process.wait(timeout=300) == 130, rest[-3000:]
    assert '"aborted"' in rest, rest
    assert_reported_interrupted(receiver, prom, rest)


# ---------------------------------------------------------------- credentials in webhook and ping URLs

USER, PASSWORD = "ci-bot", "p@ss:w0rd/é"  # escaped in the URL as RFC 3986 asks
ESCAPED = "ci-bot:p%40ss%3Aw0rd%2F%C3%A9"
EXPECTED = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://{ESCAPED}@")


def test_credentials_in_a_webhook_or_ping_url_are_sent_as_basic_auth_and_never_logged(receiver):
    captured = []
    log = lambda name, message="", **fields: captured.append((name, message, fields))  # noqa: E731
    hook, check = with_credentials(receiver.on("/hook")), with_credentials(receiver.on("/hc"))
    assert post_webhooks([hook], make_report(), timeout=2, retries=0, log=log) == [True]
    assert ping(check, "start", timeout=2, retries=0, log=log)
    assert [(r["path"], r["headers"]["Authorization"]) for r in receiver.requests] == [
        ("/hook", EXPECTED),
        ("/hc/start", EXPECTED),
    ]
    assert USER not in repr(captured) and "w0rd" not in repr(captured)


def test_a_run_with_credentials_in_its_notify_url_delivers_and_logs_no_secret(tiny_config_file, tmp_path, receiver):
    command, prom = setup(tiny_config_file, tmp_path, receiver, "--notify", with_credentials(receiver.on("/auth")),
                          "--limit", "1")  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [posted] = receiver.hits("/auth")
    assert posted["headers"]["Authorization"] == EXPECTED and json.loads(posted["body"])["exit_code"] == 0
    for text in (result.stderr, prom.read_text(), posted["body"].decode()):  # the log, metrics and report
        assert USER not in text and "w0rd" not in text and "p%40ss" not in text
