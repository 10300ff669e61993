"""The post-processing beside generation: threads write the same files and records as writing in turn, records
keep batch and row order and follow their files, at most IN_FLIGHT batches wait, the first error stops the
run, a stop signal finishes what was handed over, and a failed safety check fails only its own rows."""

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import pipeline.run.postprocess as postprocess
from pipeline.common.logs import Log
from pipeline.input.config import ConfigError, as_dict, load_config
from pipeline.input.sprite_settings import SpriteSettings
from pipeline.model.safety import build_tiny_safety_checker
from pipeline.run.executor import generate
from pipeline.run.postprocess import IN_FLIGHT, TooManyFailures, writer_threads
from pipeline.run.renderer import ModelRenderer
from tests.conftest import REPO, with_run
from tests.helpers import hooked

VOLATILE = {"generation_seconds", "write_seconds", "finished_at", "environment"}


def write_table(folder, rows, *, prompt=lambda i: f"sprite {i}", checker=lambda i: False):
    path = folder / "t.csv"
    lines = [f"r{i},{prompt(i)},{i},{str(checker(i)).lower()}\n" for i in range(rows)]
    path.write_text("id,prompt,seed,enable_safety_checker\n" + "".join(lines))
    return path


def run(config, table, out, renderers=ModelRenderer, **run_settings):
    with open(os.devnull, "w") as devnull:
        log = Log("json", stream=devnull)
        return generate(with_run(config, **run_settings), table, out, log=log, renderers=renderers)


def part_records(out):
    """Whole lines only: the log may be read while a record is being appended."""
    lines = [line for p in sorted(out.glob("parts/*.jsonl")) for line in p.read_text().split("\n")[:-1]]
    return [json.loads(line) for line in lines]


def files(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def stable(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def assert_records_match_files(out):
    for record in part_records(out):
        if record["status"] == "ok":
            data = (out / record["image"]["url"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == record["sha256"], record["id"]


@pytest.fixture(scope="module")
def flagging_config(tiny_config, tmp_path_factory):
    """The tiny model with a checker that flags every image it looks at, and sprites."""
    checker = build_tiny_safety_checker(tmp_path_factory.mktemp("checker"), flag_everything=True)
    model = replace(tiny_config.model, safety_checker=str(checker))
    return replace(tiny_config, model=model, sprites=SpriteSettings(trim=True, pad=1, sizes=(32, 16)))


def test_threads_write_the_same_files_and_records_in_the_same_order_as_writing_in_turn(flagging_config, tmp_path):
    table = write_table(tmp_path, 7, checker=lambda i: i % 3 == 0)
    in_turn = run(flagging_config, table, tmp_path / "in-turn", writer_threads=0)
    threaded = run(flagging_config, table, tmp_path / "threads", writer_threads=2)
    assert (in_turn.ok, in_turn.flagged) == (threaded.ok, threaded.flagged) == (7, 3)
    assert files(tmp_path / "threads") == files(tmp_path / "in-turn")
    assert len(files(tmp_path / "threads")) == 7 * 3  # each canvas and its two sprites
    assert stable(part_records(tmp_path / "threads")) == stable(part_records(tmp_path / "in-turn"))
    flags = {r["id"]: r["has_nsfw_concepts"] for r in part_records(tmp_path / "threads")}
    assert flags == {f"r{i}": True if i % 3 == 0 else None for i in range(7)}
    with Image.open(tmp_path / "threads" / "images" / "00000" / "r3.png") as flagged:
        assert not np.asarray(flagged).any()  # a transparent placeholder


def test_records_keep_row_order_follow_their_files_and_at_most_in_flight_batches_wait(tiny_config, tmp_path,
                                                                                     monkeypatch):  # fmt: skip
    """Nothing is written until the model has asked for batch IN_FLIGHT + 1, and then only a second later: the
    model must wait for room meanwhile. The first image of every batch is written last."""
    out, seen, gate = tmp_path / "out", [], threading.Event()
    real_write = postprocess.write_image

    def write_image(storage, url, row, *args, **kwargs):
        gate.wait()
        time.sleep(0.2 if int(row.key[1:]) % 2 == 0 else 0.0)
        return real_write(storage, url, row, *args, **kwargs)

    def before(rows):
        assert_records_match_files(out)  # at any moment, every record's file is in place
        seen.append((len(seen), len(part_records(out)) // 2, gate.is_set()))  # handed over, recorded, writing
        if len(seen) == IN_FLIGHT + 1:
            threading.Timer(1.0, gate.set).start()

    monkeypatch.setattr(postprocess, "write_image", write_image)
    summary = run(tiny_config, write_table(tmp_path, 10), out, hooked(before), writer_threads=2, batch_size=2)
    assert summary.ok == 10
    assert [handed - recorded for handed, recorded, _ in seen][: IN_FLIGHT + 1] == list(range(IN_FLIGHT + 1))
    assert max(handed - recorded for handed, recorded, _ in seen) == IN_FLIGHT, seen
    assert [writing for _, _, writing in seen] == [False] * (IN_FLIGHT + 1) + [True] * (len(seen) - IN_FLIGHT - 1)
    assert [r["id"] for r in part_records(out)] == [f"r{i}" for i in range(10)]
    assert_records_match_files(out)


def test_too_many_failures_stop_a_threaded_run_with_only_its_own_records(tiny_config, tmp_path, monkeypatch):
    calls = []

    def before(rows):
        calls.append(rows[0].key)
        raise RuntimeError("CUDA out of memory (simulated)")

    with pytest.raises(TooManyFailures, match="2 rows failed"):
        run(
            tiny_config,
            write_table(tmp_path, 12),
            tmp_path / "out",
            hooked(before),
            writer_threads=2,
            batch_size=1,
            max_failures=1,
        )
    assert 2 <= len(calls) <= 2 + IN_FLIGHT + 1  # promptly: at most the batches already handed over
    assert [(r["id"], r["status"]) for r in part_records(tmp_path / "out")] == [("r0", "failed"), ("r1", "failed")]


def test_a_stop_signal_finishes_every_batch_handed_over(tiny_config, tmp_path, monkeypatch):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    real_write = postprocess.write_image
    generated = []

    def write_image(*args, **kwargs):
        time.sleep(0.3)  # batches are still being written when the signal comes
        return real_write(*args, **kwargs)

    def before(rows):
        generated.extend(r.key for r in rows)
        if len(generated) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # during the second batch

    monkeypatch.setattr(postprocess, "write_image", write_image)
    summary = run(
        tiny_config, write_table(tmp_path, 10), tmp_path / "out", hooked(before), writer_threads=2, batch_size=2
    )
    assert summary.interrupted and summary.ok == 4
    assert [r["id"] for r in part_records(tmp_path / "out")] == generated == ["r0", "r1", "r2", "r3"]
    assert_records_match_files(tmp_path / "out")


class CheckerFailingOnBoom(ModelRenderer):
    """Its safety checker fails (as out of memory would) on any set of images that holds a 'boom' row's."""

    def __init__(self, setup):
        super().__init__(setup)
        self.boom, real = set(), self.safety_checker
        outer = self

        class Checker:
            def flags(self, rgba):
                if any(image.tobytes() in outer.boom for image in rgba):
                    raise RuntimeError("CUDA out of memory (simulated)")
                return real.flags(rgba)

        self.safety_checker = Checker()

    def images(self, rows):
        images = super().images(rows)
        self.boom |= {image.tobytes() for row, image in zip(rows, images, strict=True) if "boom" in row.prompt}
        return images


def test_a_failed_safety_check_fails_only_the_rows_that_cannot_be_checked_alone(tiny_config, tmp_path):
    checker = build_tiny_safety_checker(tmp_path / "checker", flag_everything=False)
    config = replace(tiny_config, model=replace(tiny_config.model, safety_checker=str(checker)))
    table = write_table(tmp_path, 4, prompt=lambda i: "boom" if i == 1 else f"sprite {i}", checker=lambda i: i < 3)
    summary = run(config, table, tmp_path / "out", CheckerFailingOnBoom, writer_threads=2, batch_size=4)
    assert (summary.ok, summary.failed) == (3, 1)
    records = {r["id"]: r for r in part_records(tmp_path / "out")}
    assert {k: (r["status"], r["has_nsfw_concepts"]) for k, r in records.items()} == {
        "r0": ("ok", False), "r1": ("failed", None), "r2": ("ok", False), "r3": ("ok", None)}  # fmt: skip
    assert records["r1"]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert sorted(p.name for p in (tmp_path / "out" / "images").rglob("*.png")) == ["r0.png", "r2.png", "r3.png"]


def test_a_full_disk_met_by_a_writer_thread_is_the_run_s_error_and_loses_nothing(tiny_config, tmp_path):
    config = tmp_path / "threads.yaml"
    data = as_dict(with_run(tiny_config, writer_threads=2))
    data["run"] = {k: v for k, v in data["run"].items() if v is not None}
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"

    def limit_file_size():  # a real kernel limit: writes past 12 kB fail (EFBIG) like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))

    command = [sys.executable, "-m", "pipeline", "generate", str(write_table(tmp_path, 6)), "--out", str(out),
               "--config", str(config), "--log-format", "json"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, preexec_fn=limit_file_size)
    assert result.returncode == 6, result.stderr
    error = json.loads(result.stderr.splitlines()[-1])
    assert "cannot write" in error["message"] and "bytes written" in error["message"]
    assert_records_match_files(out)
    assert not list((out / "images").rglob(".*")), "temporary files left behind"


def test_writer_threads_by_device_and_checked(tmp_path):
    assert writer_threads(None, torch.device("cpu")) == 0
    assert writer_threads(None, torch.device("cuda", 0)) == postprocess.ACCELERATOR_THREADS == 2
    assert writer_threads(3, torch.device("cpu")) == 3
    for value in (-1, "two", 1.5):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"run": {"writer_threads": value}}))
        with pytest.raises(ConfigError, match="run.writer_threads must be >= 0"):
            load_config(tmp_path / "c.yaml")


class SlowStream:
    """A log reader that lags (a pipe to a log shipper): each write lets other threads run."""

    def __init__(self):
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        time.sleep(0.0001)
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_json_log_lines_from_two_threads_never_interleave():
    """The model's thread and the committer both log: every line is one whole JSON object."""
    stream = SlowStream()
    log = Log("json", stream=stream)

    def chatter(name):
        for i in range(500):
            log.event(name, "x" * (i % 50), index=i)

    threads = [threading.Thread(target=chatter, args=(n,)) for n in ("batch_done", "row_failed")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = [json.loads(line) for line in "".join(stream.parts).splitlines()]
    assert len(events) == 1000
    for name in ("batch_done", "row_failed"):
        assert [e["index"] for e in events if e["event"] == name] == list(range(500))
