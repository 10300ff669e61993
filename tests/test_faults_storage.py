"""Storage faults in every command: a real S3 API (moto's server) behind a fault-injecting proxy on 127.0.0.1
(500s and dropped connections for chosen requests), and real local faults (a file where a folder must be, a
kernel file-size limit for a full disk, a read-only folder). Every one ends in one line and exit 6 (2 for a
location that cannot name a folder), never a traceback or exit 1."""

import json
import os
import resource
import signal
import subprocess
import sys
import uuid

import pytest

from pipeline.common.storage import Storage
from tests.conftest import REPO
from tests.fault_proxy import DROP, FaultProxy

TABLE = "id,prompt,seed\n" + "".join(f"r{i},sprite {i},{i}\n" for i in range(4))


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server and, in front of it, the proxy that every command of these tests talks to."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = FaultProxy(f"http://{host}:{port}")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": proxy.url,
        "AWS_MAX_ATTEMPTS": "2",
    }  # botocore's own retries, configured: fast tests
    yield proxy, env
    proxy.stop()
    server.stop()


@pytest.fixture
def proxy(s3, monkeypatch):
    proxy, env = s3
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    proxy.clear()
    yield proxy
    proxy.clear()


@pytest.fixture
def bucket(proxy):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    return name


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(TABLE)
    return path


def cli(*args, limit_file_size: int | None = None):
    def limit():  # a real kernel limit: writes past it fail (EFBIG) as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=600, preexec_fn=limit if limit_file_size else None)  # fmt: skip


def generate(table, out, config, *extra, **kwargs):
    return cli("generate", table, "--out", out, "--config", config, "--log-format", "json", *extra, **kwargs)


def one_line_error(result, code: int, *named: str) -> str:
    """The command's error line, after checking that it ended with `code`, one line and no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    message = json.loads(last)["message"] if last.startswith("{") else last
    if last.startswith("{"):
        assert json.loads(last)["event"] == "error" and json.loads(last)["exit_code"] == code
    else:  # Click's usage errors (2) come after the usage lines
        assert message.startswith("Error: ") and (code == 2 or len(result.stderr.strip().splitlines()) == 1)
    for name in named:
        assert name in message, (name, message)
    return message


def folder_command(command: list[str], folder: str) -> list[str]:
    name, *flags = command
    return [name, folder, *(f.format(uid=uuid.uuid4().hex) for f in flags)]


@pytest.fixture
def finished(bucket, table, tiny_config_file):
    out = f"s3://{bucket}/run"
    result = generate(table, out, tiny_config_file, "--trim")
    assert result.returncode == 0, result.stderr
    return out


# ---------------------------------------------------------------- object store


def test_a_transient_500_and_a_dropped_connection_are_retried_by_the_backend(proxy, bucket, table,
                                                                             tiny_config_file):  # fmt: skip
    proxy.fail(rf"PUT /{bucket}/run/images/.*\.png", 500, times=1)
    proxy.fail(rf"GET /{bucket}\?list-type", DROP, times=1)
    result = generate(table, f"s3://{bucket}/run", tiny_config_file)
    assert result.returncode == 0, result.stderr
    assert all(f.injected == 1 for f in proxy.faults)
    assert len(Storage(f"s3://{bucket}/run").fs.find(f"{bucket}/run/images")) == 4


@pytest.mark.parametrize("answer", [500, DROP])
def test_endpoint_gone_after_the_first_png_is_exit_6_and_the_rerun_completes(proxy, bucket, table, tiny_config_file,
                                                                             answer):  # fmt: skip
    out = f"s3://{bucket}/run"
    proxy.fail(".", answer, armed_by=rf"PUT /{bucket}/run/images/.*\.png")
    message = one_line_error(generate(table, out, tiny_config_file), 6, out)
    assert "rerun" in message
    proxy.clear()
    assert generate(table, out, tiny_config_file).returncode == 0


MID_RUN = [
    ("planning", r"GET /{b}\?list-type"),
    ("merging", r"PUT /{b}/run/manifest"),
    ("reading the logs to merge", r"GET /{b}/run/parts/.*\.jsonl"),
]


@pytest.mark.parametrize(("moment", "pattern"), MID_RUN, ids=[m for m, _ in MID_RUN])
def test_500s_while_planning_or_merging_are_exit_6(proxy, bucket, table, tiny_config_file, moment, pattern):
    out = f"s3://{bucket}/run"
    proxy.fail(pattern.format(b=bucket), 500)
    one_line_error(generate(table, out, tiny_config_file), 6, out)


EVERYTHING, AFTER_LOOKUP = ".", r"^(GET|PUT|POST|DELETE) /"  # all requests; all once the folder was found (HEAD)
FOLDER_FAULTS = [(["status"], EVERYTHING, 500), (["status"], AFTER_LOOKUP, DROP), (["merge"], AFTER_LOOKUP, 500),
                 (["report"], AFTER_LOOKUP, 500), (["sprites", "--trim"], AFTER_LOOKUP, DROP),
                 (["atlas"], AFTER_LOOKUP, 500), (["export", "--format", "parquet", "--to", "memory://e/{uid}"],
                                                  AFTER_LOOKUP, 500)]  # fmt: skip


@pytest.mark.parametrize(("command", "pattern", "answer"), FOLDER_FAULTS, ids=lambda v: str(v).split(",")[0])
def test_folder_commands_on_a_failing_store_are_exit_6(proxy, finished, command, pattern, answer):
    proxy.fail(pattern, answer)
    message = one_line_error(cli(*folder_command(command, finished)), 6)
    assert "FileNotFoundError" not in message and "not an output folder" not in message  # a 500 is not a 404


def test_the_folder_lock_holds_for_every_spelling_of_a_folder(proxy, bucket, table, tiny_config_file):
    from pipeline.folder.lock import lock_folder
    from pipeline.plan.sharding import Process

    with lock_folder(Storage(f"s3://{bucket}/run"), Process()):
        for spelling in (f"s3://{bucket}/run/", f"s3a://{bucket}/run", f"s3://{bucket}/x/../run",
                         f"S3://{bucket}//run"):  # fmt: skip
            refused = generate(table, spelling, tiny_config_file)
            assert one_line_error(refused, 5, f"s3://{bucket}/run is in use by another run")
    assert not Storage(f"s3://{bucket}/run").fs.exists(f"{bucket}/run/images")


def test_a_location_that_leaves_its_bucket_is_a_usage_error(proxy, bucket, table, tiny_config_file):
    one_line_error(generate(table, f"s3://{bucket}/../other/run", tiny_config_file), 2, "'..' leaves the bucket")


# ---------------------------------------------------------------- local folders


def test_out_is_a_file_or_under_one(tmp_path, table, tiny_config_file):
    (tmp_path / "file").write_text("not a folder")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        one_line_error(generate(table, out, tiny_config_file), 6, str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_file_where_the_image_folder_must_be(tmp_path, table, tiny_config_file):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "00000").write_text("in the way")
    one_line_error(generate(table, out, tiny_config_file), 6, str(out / "images" / "00000"))
    (out / "images" / "00000").unlink()
    assert generate(table, out, tiny_config_file).returncode == 0


def test_an_ambiguous_out_with_double_colons_is_refused_and_nothing_is_made(tmp_path, table, tiny_config_file):
    one_line_error(generate(table, tmp_path / "x" / "a::b", tiny_config_file), 2, "a::b", "'::'")
    assert not (tmp_path / "x").exists()


def test_a_missing_model_leaves_no_output_folder(tmp_path, table):
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  base: {tmp_path / 'no-such-model'}\n  device: cpu\n")
    assert generate(table, tmp_path / "new" / "out", config).returncode == 4
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    assert generate(table, tmp_path / "kept", config).returncode == 4
    assert (tmp_path / "kept").is_dir()  # a folder the run did not make stays


@pytest.fixture
def local_run(tmp_path, table, tiny_config_file):
    out = tmp_path / "out"
    assert generate(table, out, tiny_config_file).returncode == 0
    return out


def test_full_disk_during_report_and_merge_is_exit_6(local_run):
    (local_run / "manifest.parquet").unlink()  # merge has to write it again
    message = one_line_error(cli("merge", local_run, limit_file_size=1000), 6, str(local_run))
    assert "no space left" in message
    message = one_line_error(cli("report", local_run, limit_file_size=1000), 6, str(local_run))
    assert "no space left" in message
    assert cli("merge", local_run).returncode == 0 and cli("report", local_run).returncode == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores mode bits: a chmod-ed folder stays writable to root")
def test_read_only_folder_is_exit_6(local_run, table, tiny_config_file):
    (local_run / "thumbs").mkdir(exist_ok=True)
    for folder in (local_run / "thumbs", local_run):
        folder.chmod(0o555)
    try:
        one_line_error(generate(table, local_run, tiny_config_file, "--overwrite"), 6, str(local_run))
        one_line_error(cli("report", local_run), 6, str(local_run))
    finally:
        for folder in (local_run, local_run / "thumbs"):
            folder.chmod(0o755)


# ---------------------------------------------------------------- one normal form per location


@pytest.mark.parametrize("spelling", ["s3://b/run", "s3://b/run/", "s3a://b/run", "S3N://b//run/", "s3://b/x/../run",
                                      "s3://b/./run", "s3://key:secret@b/run"])  # fmt: skip
def test_every_spelling_of_a_folder_has_one_normal_form(spelling):
    from pipeline.common.storage import Location, display

    assert Location.parse(spelling).url == display(spelling) == str(Storage(spelling)) == "s3://b/run"
    assert Storage(spelling).root == "b/run"


def test_credentials_in_an_s3_url_are_used_and_never_shown():
    from pipeline.common.storage import scrub

    storage = Storage("s3://AKIDEXAMPLEKEY:se%2Fcret@b/run")
    assert (storage.fs.key, storage.fs.secret) == ("AKIDEXAMPLEKEY", "se/cret")
    assert storage.shown("images") == "s3://b/run/images"
    assert scrub("denied for AKIDEXAMPLEKEY with se/cret (se%2Fcret)") == "denied for *** with *** (***)"


def test_report_with_a_file_where_its_thumbnail_folder_must_be(local_run):
    (local_run / "thumbs").write_text("in the way")  # a real fault that root cannot write through either
    one_line_error(cli("report", local_run), 6, str(local_run / "thumbs"))


def test_an_endpoint_that_is_gone_is_exit_6_in_every_command(finished, table, tiny_config_file, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nothing listens on any more: connection refused
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{sock.getsockname()[1]}")
    for result in (generate(table, finished, tiny_config_file), cli("status", finished), cli("merge", finished)):
        message = one_line_error(result, 6, finished)
        assert "EndpointConnectionError" in message and "rerun" in message
