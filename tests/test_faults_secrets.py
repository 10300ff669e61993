"""Planted secrets never leave the command line: credentials in the storage URL, tokens in the --notify and
--ping URLs and the webhook signing secret are looked for in every file a run writes (output folder, locks
under the cache, metrics file), every webhook body a real local HTTP server receives, and stdout/stderr."""

import io
import json
import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import REPO

KEY = f"AKIAPLANTED{uuid.uuid4().hex[:12].upper()}"
SECRET = f"storage-secret-{uuid.uuid4().hex}"
HOOK_TOKEN = f"hook-token-{uuid.uuid4().hex}"
QUERY_TOKEN = f"query-token-{uuid.uuid4().hex}"
PING_TOKEN = f"ping-token-{uuid.uuid4().hex}"
SIGNING = f"signing-secret-{uuid.uuid4().hex}"
PLANTED = (KEY, SECRET, HOOK_TOKEN, QUERY_TOKEN, PING_TOKEN, SIGNING)
TABLE = "id,prompt,seed\n" + "".join(f"r{i},sprite {i},{i}\n" for i in range(3)) + "bad,x,-1\n"


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}  # fmt: skip
    server.stop()


@pytest.fixture
def receiver():
    """A real HTTP server that keeps every request it gets (webhooks, pings)."""
    received: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self):
            received.append((self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _any

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def texts(name: str, data: bytes) -> list[str]:
    """What a file says: its bytes, and the decoded text of formats that compress (PNG chunks, Parquet)."""
    found = [data.decode("latin-1")]
    if name.endswith(".png"):
        from PIL import Image

        found += [f"{k}={v}" for k, v in Image.open(io.BytesIO(data)).text.items()]
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        found += [str(table.to_pylist()), str(table.schema.metadata)]
    return found


def leaks(where: str, text: str) -> list[str]:
    return [f"{where}: {secret}" for secret in PLANTED if secret in text]


def scan_local(folder: Path) -> list[str]:
    found = [leak for path in folder.rglob("*") if path.is_file() for text in texts(path.name, path.read_bytes())
             for leak in leaks(str(path), text)]  # fmt: skip
    assert any(folder.rglob("*")), folder
    return found


def run(args: list, tmp_path: Path, s3: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **s3, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "LAYERDIFFUSE_WEBHOOK_SECRET": SIGNING,
           "LAYERDIFFUSE_CACHE": str(tmp_path / "cache"),  # its locks are scanned too
           "PYTHONFAULTHANDLER": "1"}  # a native abort (once seen at exit, under load) shows every thread  # fmt: skip
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def notify_flags(url: str, tmp_path: Path) -> list[str]:
    return ["--notify", f"{url}/hook/{HOOK_TOKEN}?token={QUERY_TOKEN}", "--ping", f"{url}/ping/{PING_TOKEN}",
            "--metrics-file", tmp_path / "metrics" / "run.prom"]  # fmt: skip


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_planted_secret_in_anything_a_run_writes_or_prints(s3, receiver, tmp_path, tiny_config_file, log_format):
    import s3fs

    url, received = receiver
    for name, value in s3.items():
        os.environ.setdefault(name, value)  # the bucket is made here; the runs take the URL's credentials
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3["AWS_ENDPOINT_URL"]}).mkdir(
        bucket
    )
    (tmp_path / "t.csv").write_text(TABLE)
    (tmp_path / "metrics").mkdir()
    out = f"s3://{KEY}:{SECRET}@{bucket}"  # no prefix: the run id comes from the bucket's name
    common = ["--config", tiny_config_file, "--log-format", log_format, "--report", "--trim"]
    results = [
        run(["generate", tmp_path / "t.csv", "--out", out, *common, *notify_flags(url, tmp_path)], tmp_path, s3),
        run(["generate", tmp_path / "t.csv", "--out", tmp_path / "local", *common, *notify_flags(url, tmp_path)],
            tmp_path, s3),  # fmt: skip
        run(["generate", tmp_path / "t.csv", "--out", f"s3://{KEY}:{SECRET}@no-such-bucket-{bucket}/run",
             "--config", tiny_config_file, "--log-format", log_format, *notify_flags(url, tmp_path)], tmp_path, s3),
    ]  # fmt: skip
    assert [r.returncode for r in results] == [3, 3, 6], [r.stderr for r in results]
    for command in (["status"], ["merge"], ["report"], ["sprites", "--pad", "2"], ["atlas"],
                    ["export", "--format", "webdataset", "--to", tmp_path / "export"]):  # fmt: skip
        results.append(run([command[0], out, *command[1:]], tmp_path, s3))
        assert results[-1].returncode in (0, 3), results[-1].stderr
    results.append(run(["status", f"s3://{KEY}:{SECRET}@no-such-bucket-{bucket}/run"], tmp_path, s3))

    found = [leak for r in results for leak in leaks("output", r.stdout + r.stderr)]
    found += scan_local(tmp_path / "local") + scan_local(tmp_path / "cache") + scan_local(tmp_path / "metrics")
    found += scan_local(tmp_path / "export")
    remote = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3["AWS_ENDPOINT_URL"]})
    files = remote.find(bucket)
    assert any(f.endswith("manifest.parquet") for f in files) and any(f.endswith(".png") for f in files)
    found += [leak for f in files for text in texts(f, remote.cat_file(f)) for leak in leaks(f, text)]
    bodies = [body for path, body in received if path.startswith("/hook/")]
    assert len(bodies) == 3 and all(b"run_id" in body for body in bodies)
    found += [leak for body in bodies for leak in leaks("webhook body", body.decode())]
    found += [
        leak for path, body in received if path.startswith("/ping/") for leak in leaks("ping body", body.decode())
    ]
    assert not found, found
    lock = (tmp_path / "local" / ".lock").read_text()
    assert set(json.loads(lock)) == {"pid", "host", "started_at"}
