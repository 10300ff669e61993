"""Webhooks and health pings against a real HTTP server on 127.0.0.1, started by each test."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline import __version__
from pipeline.input.unattended_settings import check_url
from pipeline.unattended.notify import (
    ERROR_CHARS,
    RunCounts,
    RunReport,
    first_failures,
    ping,
    post_webhooks,
    redact,
    run_status,
)

FAST = {"timeout": 0.2, "backoff": 0.01}  # retries wait 0.01, 0.02, ... seconds


class Receiver:
    """Records every request; answers each path from a script of (status, delay) pairs, then 200."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: dict[str, list[tuple[int, float]]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._answer()

            def do_POST(self):
                self._answer()

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                receiver.requests.append(
                    {"method": self.command, "path": self.path, "headers": self.headers, "body": body}
                )
                status, delay = (receiver.script.get(path) or [(200, 0.0)]).pop(0)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up waiting (the "slow" answers): that is the point

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # a handler still sleeping for a "slow" answer never blocks teardown
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def on(self, path: str, *answers: int | tuple[int, float]) -> str:
        self.script[path] = [a if isinstance(a, tuple) else (a, 0.0) for a in answers]
        return self.url + path

    def hits(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"].split("?")[0] == path]


@pytest.fixture
def receiver():
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def events():
    """A log callback with the signature of Log.event, and what it received."""
    captured: list[tuple[str, str, dict]] = []

    def log(name, message="", **fields):
        captured.append((name, message, fields))

    log.captured = captured
    return log


def closed_port_url(path: str = "/hook") -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"  # nothing listens there any more: connection refused


def make_report(**changes) -> RunReport:
    started = datetime(2026, 3, 1, 2, 0, 0, 125000, tzinfo=timezone.utc)
    report = RunReport(
        run_id="20260301T020000Z-4f2a",
        status="partial",
        exit_code=3,
        counts=RunCounts(done=7, failed=2, flagged=1, skipped=40, invalid=1),
        started_at=started,
        finished_at=started + timedelta(seconds=93.5),
        duration_seconds=93.5,
        images_per_second=7 / 93.5,
        out="/data/out/nightly",
        manifest="/data/out/nightly/manifest.parquet",
        first_failures=first_failures([("row-000003", "CUDA out of memory"), ("sprite-ü", "bad cell")]),
        host="gpu-7",
    )
    return replace(report, **changes)


def expected_document(report: RunReport) -> dict:
    counts = report.counts
    return {
        "tool": "layerdiffuse-batch",
        "version": __version__,
        "run_id": report.run_id,
        "status": report.status,
        "exit_code": report.exit_code,
        "counts": {
            "done": counts.done,
            "failed": counts.failed,
            "flagged": counts.flagged,
            "skipped": counts.skipped,
            "invalid": counts.invalid,
        },
        "started_at": report.started_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "finished_at": report.finished_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "duration_seconds": round(report.duration_seconds, 3),
        "images_per_second": round(report.images_per_second, 3),
        "out": report.out,
        "manifest": report.manifest,
        "host": report.host,
        "first_failures": [{"key": k, "error": e} for k, e in report.first_failures],
        "text": report.summary_line(),
    }


def signature_ok(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does (docs/unattended.md)."""
    return hmac.compare_digest("sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(), header)


def test_payload_and_signature(receiver, events):
    report = make_report()
    urls = [receiver.on("/a"), receiver.on("/b")]
    assert post_webhooks(urls, report, secret="s3cret-Ö", log=events, **FAST) == [True, True]
    assert [r["path"] for r in receiver.requests] == ["/a", "/b"]
    for request in receiver.requests:
        body, headers = request["body"], request["headers"]
        assert request["method"] == "POST"
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"] == f"layerdiffuse-batch/{__version__}"
        assert body == report.to_json()
        document = json.loads(body.decode("utf-8"))
        assert document == expected_document(report)
        assert list(document) == list(expected_document(report))  # stable key order
        assert document["first_failures"][1]["key"] == "sprite-ü"
        assert signature_ok("s3cret-Ö".encode(), body, headers["X-Signature-SHA256"])
        assert not signature_ok("s3cret-Ö".encode(), body.replace(b'"partial"', b'"ok"'), headers["X-Signature-SHA256"])
        assert not signature_ok(b"wrong", body, headers["X-Signature-SHA256"])
    assert [e[0] for e in events.captured] == ["webhook_sent", "webhook_sent"]


def test_no_secret_no_signature_header(receiver):
    assert post_webhooks([receiver.on("/a")], make_report(), secret="", **FAST) == [True]
    assert "X-Signature-SHA256" not in receiver.requests[0]["headers"]


def test_same_report_same_bytes():
    first, second = make_report(), make_report()
    assert first.to_json() == second.to_json()
    assert make_report(images_per_second=float("nan")).as_dict()["images_per_second"] == 0.0


def test_endpoint_down_is_retried_and_the_next_one_still_gets_it(receiver, events):
    down = closed_port_url("/hook-token-abc")
    assert post_webhooks([down, receiver.on("/up")], make_report(), retries=2, log=events, **FAST) == [False, True]
    assert len(receiver.hits("/up")) == 1
    failed = [e for e in events.captured if e[0] == "webhook_failed"]
    assert len(failed) == 1
    assert failed[0][2]["attempts"] == 3
    assert failed[0][2]["url"] == redact(down) == down.rsplit("/", 1)[0] + "/..."


def test_slow_endpoint_times_out_and_is_retried(receiver, events):
    url = receiver.on("/slow", (200, 1.0), (200, 1.0))
    started = time.monotonic()
    assert post_webhooks([url], make_report(), retries=1, log=events, **FAST) == [False]
    assert time.monotonic() - started < 0.9  # two 0.2 s timeouts, not the server's 2 s
    assert len(receiver.hits("/slow")) == 2
    [(name, message, fields)] = events.captured
    assert (name, fields["attempts"]) == ("webhook_failed", 2)
    assert "timed out" in message


def test_500_then_200_is_retried_and_delivered(receiver, events):
    url = receiver.on("/flaky", 500, 200)
    assert post_webhooks([url], make_report(), retries=3, log=events, **FAST) == [True]
    assert [r["body"] for r in receiver.hits("/flaky")] == [make_report().to_json()] * 2
    assert [(e[0], e[2]["attempts"]) for e in events.captured] == [("webhook_sent", 2)]


def test_5xx_every_time_gives_up_after_the_retries(receiver, events):
    url = receiver.on("/broken", 503, 503, 503, 503)
    assert post_webhooks([url], make_report(), retries=2, log=events, **FAST) == [False]
    assert len(receiver.hits("/broken")) == 3
    assert "HTTP 503" in events.captured[0][1]


@pytest.mark.parametrize("status", [400, 401, 404, 307])
def test_4xx_and_redirects_are_not_retried(receiver, events, status):
    url = receiver.on("/refuses", status, 200)
    assert post_webhooks([url], make_report(), retries=3, log=events, **FAST) == [False]
    assert len(receiver.hits("/refuses")) == 1
    assert receiver.hits("/elsewhere") == []  # a redirect is reported, not followed
    [(name, message, fields)] = events.captured
    assert (name, fields["attempts"]) == ("webhook_failed", 1)
    assert f"HTTP {status}" in message


def test_secrets_and_url_tokens_never_logged(receiver, events):
    secret, token, password = "hmac-key-93xq", "T0KEN-in-path", "pa55word"
    urls = [
        closed_port_url(f"/services/{token}?key=q-{token}").replace("http://", f"http://user:{password}@"),
        receiver.on(f"/bad/{token}", 400).replace("http://", f"http://user:{password}@") + f"?sig=q-{token}",
    ]
    assert post_webhooks(urls, make_report(), secret=secret, retries=1, log=events, **FAST) == [False, False]
    assert ping(urls[0], "fail", log=events, retries=0, timeout=0.2) is False
    assert len(events.captured) == 3
    logged = repr(events.captured)
    for hidden in (secret, token, password, "user:"):
        assert hidden not in logged
    assert receiver.url + "/..." in logged


def test_pings_hit_the_healthchecks_paths(receiver, events):
    base = receiver.on("/ping/5f1e-uuid")
    assert ping(base, "start", log=events) is True
    assert ping(base + "/", "success", log=events) is True
    assert ping(base + "?rid=42", "fail", body=b"3 rows failed", log=events) is True
    paths = [(r["method"], r["path"], r["body"]) for r in receiver.requests]
    assert paths == [
        ("GET", "/ping/5f1e-uuid/start", b""),
        ("GET", "/ping/5f1e-uuid", b""),
        ("POST", "/ping/5f1e-uuid/fail?rid=42", b"3 rows failed"),
    ]
    assert all(r["headers"]["User-Agent"].startswith("layerdiffuse-batch/") for r in receiver.requests)
    assert events.captured == []


def test_ping_down_or_refused_is_best_effort(receiver, events):
    assert ping(closed_port_url("/uuid"), "start", timeout=0.2, retries=1, backoff=0.01, log=events) is False
    receiver.on("/gone/start", 404)
    assert ping(receiver.url + "/gone", "start", timeout=0.2, log=events) is False
    assert [(e[0], e[2]["kind"], e[2]["attempts"]) for e in events.captured] == [
        ("ping_failed", "start", 2),
        ("ping_failed", "start", 1),
    ]
    with pytest.raises(ValueError, match="start, success, fail"):
        ping(receiver.url, "finish")


@pytest.mark.parametrize("url", ["http://example.com/hook", "https://hc-ping.com/uuid?x=1", "http://[::1]:8080/"])
def test_check_url_accepts_http_and_https(url):
    assert check_url(url, "--notify") == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/secret-tok", "scheme 'ftp'"),
        ("hc-ping.com/secret-tok", "no scheme"),
        ("file:///etc/secret-tok", "scheme 'file'"),
        ("http:///secret-tok", "no host"),
        ("https://example.com:99999/secret-tok", "port"),
        ("https://example.com/secret-tok with space", "spaces"),
        ("", "empty"),
    ],
)
def test_check_url_refuses_others_without_echoing_them(url, problem):
    with pytest.raises(ValueError, match="--ping must be an http:// or https:// URL") as caught:
        check_url(url, "--ping")
    assert problem in str(caught.value)
    assert "secret-tok" not in str(caught.value)


def test_redact_keeps_scheme_host_port_only():
    assert redact("https://u:p@hooks.example.com:8443/services/T1/B2/x?token=y") == "https://hooks.example.com:8443/..."
    assert redact("https://hooks.example.com") == "https://hooks.example.com"
    assert redact("http://[::1]:9/x") == "http://[::1]:9/..."


@pytest.mark.parametrize(
    ("exit_code", "counts", "status"),
    [
        (0, RunCounts(done=3), "ok"),
        (0, RunCounts(skipped=3), "ok"),
        (3, RunCounts(done=2, failed=1), "partial"),
        (3, RunCounts(skipped=2, invalid=1), "partial"),
        (3, RunCounts(failed=2, invalid=1), "failed"),
        (130, RunCounts(done=1), "interrupted"),
        (7, RunCounts(done=5, failed=9), "failed"),
        (4, RunCounts(), "failed"),
        (1, RunCounts(done=1), "failed"),
    ],
)
def test_run_status(exit_code, counts, status):
    assert run_status(exit_code, counts) == status


def test_first_failures_are_capped():
    pairs = [(f"k{i}", "x" * (ERROR_CHARS + i)) for i in range(30)]
    kept = first_failures(pairs, limit=4)
    assert [key for key, _ in kept] == ["k0", "k1", "k2", "k3"]
    assert kept[0][1] == "x" * ERROR_CHARS
    assert [len(error) for _, error in kept[1:]] == [ERROR_CHARS] * 3
    assert kept[1][1].endswith("...")


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match="ok, partial, failed, interrupted"):
        make_report(status="done")


def test_documented_receiver_verifies_signatures(monkeypatch, capsys):
    """The receiver snippet of docs/unattended.md, run as written, accepts signed reports and refuses forged ones."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "unattended.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    monkeypatch.setenv("LAYERDIFFUSE_WEBHOOK_SECRET", "doc-secret")
    namespace = {"__name__": "receiver_snippet"}
    exec(compile(snippet, "docs/unattended.md", "exec"), namespace)
    server = ThreadingHTTPServer(("127.0.0.1", 0), namespace["Hook"])
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        url, report = f"http://127.0.0.1:{server.server_address[1]}/hook", make_report()
        assert post_webhooks([url], report, secret="doc-secret", **FAST) == [True]
        assert capsys.readouterr().out.startswith(f"{report.run_id} partial ")
        assert post_webhooks([url], report, secret="forged", **FAST) == [False]
        assert post_webhooks([url], report, **FAST) == [False]
        assert capsys.readouterr().out == ""
    finally:
        server.shutdown()
        server.server_close()
