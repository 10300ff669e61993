"""Outputs and tables on object storage: a real S3 API (moto's server on 127.0.0.1) reached through s3fs,
and fsspec's memory:// filesystem for the fast checks."""

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from pipeline.common.faults import ENV as FAULT
from pipeline.common.storage import Storage
from pipeline.folder.layout import PARTS
from pipeline.folder.manifest import folder_state, merge, write_keys
from pipeline.folder.parts import PartWriter
from tests.conftest import REPO

SECRET = f"secret-{uuid.uuid4().hex}"  # never to be seen in a log, a record or a file
VOLATILE = {"generation_seconds", "write_seconds", "finished_at", "environment", "rank"}
TABLE = "id,prompt,seed,category\n" + "".join(f"r{i},sprite {i},{i},c{i % 2}\n" for i in range(5)) + "bad,x,-1,c\n"


@pytest.fixture(scope="module")
def s3():
    """A real S3 API for this test module; each test makes its own bucket."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}  # fmt: skip
    yield env
    server.stop()


@pytest.fixture
def bucket(s3, monkeypatch):
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    return name


def run(*args, **env):
    command = [sys.executable, "-m", "pipeline", *map(str, args)]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)


def generate(table, out, config, *extra, **env):
    return run("generate", table, "--out", out, "--config", config, "--log-format", "json", *extra, **env)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, tiny_config_file):
    folder = tmp_path_factory.mktemp("local")
    (folder / "t.csv").write_text(TABLE)
    result = generate(folder / "t.csv", folder / "out", tiny_config_file)
    assert result.returncode == 3, result.stderr  # the invalid row
    return folder


def images(storage: Storage) -> dict[str, str]:
    storage.fs.invalidate_cache()  # other processes wrote since this one last listed
    found = storage.fs.find(storage.path("images"))
    return {path.rsplit("/", 1)[-1]: hashlib.sha256(storage.fs.cat_file(path)).hexdigest() for path in found}


def local_images(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "out" / "images").rglob("*.png")}


def same_records(a: list[dict], b: list[dict]) -> bool:
    """Equal but for where the table was (its path is in the invalid row's message)."""
    return [{k: v for k, v in r.items() if k != "error"} for r in a] == [{k: v for k, v in r.items() if k != "error"}
                                                                         for r in b]  # fmt: skip


def manifest(storage: Storage) -> list[dict]:
    lines = storage.read_bytes("manifest.jsonl").decode().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in VOLATILE} for x in lines]


def test_a_run_on_s3_writes_what_a_local_run_writes_and_resumes_after_a_kill(bucket, local_reference,
                                                                             tiny_config_file):  # fmt: skip
    out = f"s3://{bucket}/nightly"
    storage = Storage(out)
    (local_reference / "table.csv").write_text(TABLE)
    Storage(f"s3://{bucket}").write("tables/t.csv", TABLE.encode())
    table = f"s3://{bucket}/tables/t.csv"
    killed = generate(table, out, tiny_config_file, **{FAULT: "png_in_place:3"})
    assert killed.returncode == -9, killed.stderr
    partial = images(storage)
    assert 0 < len(partial) < 5 and all(local_images(local_reference)[k] == v for k, v in partial.items())
    assert not storage.exists("manifest.parquet")
    resumed = generate(table, out, tiny_config_file)
    assert resumed.returncode == 3, resumed.stderr
    summary = json.loads(resumed.stderr.splitlines()[-2])
    assert summary["skipped"] + summary["ok"] == 5 and summary["skipped"] >= 2  # the images put before the kill
    assert images(storage) == local_images(local_reference)
    assert same_records(manifest(storage), manifest(Storage(local_reference / "out")))
    assert manifest(storage)[-1]["error"].startswith(f"{table}: row 6, column 'seed'")
    assert json.loads(storage.read_bytes("run.json"))["input"] == table
    status = run("status", out, "--json")
    assert status.returncode == 3 and json.loads(status.stdout)["done"] == 5  # 3: the invalid row
    report = run("report", out)
    assert report.returncode == 0 and storage.exists("report.html") and storage.exists("contact_sheet.png")
    everything = [killed.stderr, resumed.stderr, status.stdout, report.stdout]
    everything += [storage.fs.cat_file(p).decode(errors="replace") for p in storage.fs.find(storage.path())
                   if not p.endswith(".png")]  # fmt: skip
    assert not any(SECRET in text for text in everything)


def test_two_shard_jobs_on_s3_then_merge(bucket, local_reference, tiny_config_file):
    out = f"s3://{bucket}/sharded"
    for i in range(2):
        result = generate(local_reference / "t.csv", out, tiny_config_file, "--shard", f"{i}/2")
        assert result.returncode == 3, result.stderr
    storage = Storage(out)
    storage.remove("manifest.jsonl")
    storage.remove("manifest.parquet")
    merged = run("merge", out)
    assert merged.returncode == 0, merged.stderr
    assert manifest(storage) == manifest(Storage(local_reference / "out"))
    assert images(storage) == local_images(local_reference)


def test_deciding_what_is_done_lists_folders_and_reads_no_image(bucket, local_reference, tiny_config_file,
                                                                 monkeypatch):  # fmt: skip
    out = f"s3://{bucket}/listed"
    assert generate(local_reference / "t.csv", out, tiny_config_file).returncode == 3
    import s3fs

    calls = []
    for method in ("_cat_file", "_info", "_ls"):
        real = getattr(s3fs.S3FileSystem, method)

        async def spy(self, path, *args, _real=real, _name=method, **kwargs):
            calls.append((_name, str(path)))
            return await _real(self, path, *args, **kwargs)

        monkeypatch.setattr(s3fs.S3FileSystem, method, spy)
    opened = s3fs.S3File.__init__

    def spy_open(self, s3, path, *args, **kwargs):
        calls.append(("open", str(path)))
        opened(self, s3, path, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3File, "__init__", spy_open)
    s3fs.S3FileSystem.clear_instance_cache()  # a new instance takes the spies into its sync methods
    from pipeline.report.status import folder_status

    assert folder_status(Storage(out))["done"] == 5
    assert not [c for c in calls if "/images/" in c[1] and c[0] != "_ls"], calls  # no request per image
    assert [c for c in calls if c[0] == "_ls" and "/images/" in c[1]] == [("_ls", f"{bucket}/listed/images/00000")]


def test_bad_locations_are_clear_errors(bucket, tmp_path, tiny_config_file):
    (tmp_path / "t.csv").write_text("prompt\na\n")
    missing = generate(tmp_path / "t.csv", "s3://no-such-bucket-here/out", tiny_config_file)
    assert missing.returncode == 6 and "does the bucket exist" in missing.stderr
    unknown = generate(tmp_path / "t.csv", "nosuchscheme://x/out", tiny_config_file)
    assert unknown.returncode == 2 and "nosuchscheme://x/out" in unknown.stderr
    absent = generate(f"s3://{bucket}/nothing-here.csv", tmp_path / "out", tiny_config_file)
    assert absent.returncode == 2 and f"s3://{bucket}/nothing-here.csv: no such file" in absent.stderr
    secret_url = f"s3://user:{SECRET}@{bucket}/x.csv"
    hidden = generate(secret_url, tmp_path / "out", tiny_config_file)
    assert hidden.returncode == 2 and SECRET not in hidden.stderr


@pytest.mark.parametrize("command", [["status"], ["report"], ["merge"], ["sprites", "--trim"], ["atlas"],
                                     ["export", "--format", "parquet", "--to", "memory://e"]])  # fmt: skip
def test_folder_commands_name_a_folder_without_its_credentials(bucket, command):
    from click.testing import CliRunner

    from pipeline.cli import cli

    name, *flags = command
    result = CliRunner().invoke(cli, [name, f"s3://user:{SECRET}@{bucket}/none", *flags])
    assert result.exit_code == 2, result.output
    assert SECRET not in result.output and f"s3://{bucket}/none" in result.output


def test_memory_storage_logs_in_whole_objects_and_merges():
    storage = Storage(f"memory://runs/{uuid.uuid4().hex}")
    records = [{"id": k, "row": i + 1, "status": "failed", "error": "boom", "category": i} for i, k in enumerate("abc")]
    with PartWriter(storage, "20260101T000000000000Z-rank00000-of-00001") as part:
        part.append(records[0])
        part.append(records[1])
        part.flush()
        part.append(records[2])
    logs = sorted(name for name in storage.sizes(PARTS) if name.endswith(".jsonl"))
    assert logs == ["20260101T000000000000Z-rank00000-of-00001.000001.jsonl",
                    "20260101T000000000000Z-rank00000-of-00001.000002.jsonl"]  # fmt: skip
    assert sorted(folder_state(storage, ["id"]).column("id").to_pylist()) == ["a", "b", "c"]
    write_keys(storage, ["c", "a", "b"], ["category"])
    assert merge(storage).rows == 3
    lines = [json.loads(x) for x in storage.read_bytes("manifest.jsonl").splitlines()]
    assert [(r["id"], r["category"], r["status"]) for r in lines] == [("c", 2, "failed"), ("a", 0, "failed"),
                                                                     ("b", 1, "failed")]  # fmt: skip


@pytest.fixture
def denying_s3(tmp_path):
    """A real S3 API that checks credentials (moto's IAM, which knows none): every request is refused."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield {"AWS_ACCESS_KEY_ID": "unknown", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": url}  # fmt: skip
    server.terminate()
    server.wait()


def test_denied_access_is_a_clear_output_error(denying_s3, tmp_path, tiny_config_file):
    (tmp_path / "t.csv").write_text("prompt\na\n")
    denied = generate(tmp_path / "t.csv", "s3://some-bucket/out", tiny_config_file, **denying_s3)
    assert denied.returncode == 6, denied.stderr
    assert "access denied; check the storage's credentials" in denied.stderr and SECRET not in denied.stderr
