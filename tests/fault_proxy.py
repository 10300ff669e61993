"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real S3 API (moto's server): chosen requests get a
500 or a dropped connection, the others pass through unchanged."""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DROP = "drop"  # close the connection without an answer


@dataclass
class Fault:
    pattern: str  # a regex searched in "METHOD /path?query"
    answer: int | str  # an HTTP status, or DROP
    after: int = 0  # matching requests let through first
    times: int | None = None  # faults to inject (None: every matching request from then on)
    armed_by: str | None = None  # a regex: no fault before a request matching it went through
    seen: int = 0
    injected: int = 0

    def fires(self, request: str) -> bool:
        if self.armed_by is not None:
            if re.search(self.armed_by, request):
                self.armed_by = None  # this one passes; the next ones may fail
            return False
        if not re.search(self.pattern, request):
            return False
        self.seen += 1
        if self.seen <= self.after or (self.times is not None and self.injected >= self.times):
            return False
        self.injected += 1
        return True


class FaultProxy:
    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.faults: list[Fault] = []
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, pattern: str, answer: int | str = 500, after: int = 0, times: int | None = None,
             armed_by: str | None = None) -> Fault:  # fmt: skip
        fault = Fault(pattern, answer, after, times, armed_by)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def _decide(self, request: str) -> int | str | None:
        with self._lock:
            self.requests.append(request)
            return next((f.answer for f in self.faults if f.fires(request)), None)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = proxy._decide(f"{self.command} {self.path}")
                if answer == DROP:
                    self.close_connection = True
                    return
                if answer is not None:
                    return self._reply(answer, b"<Error><Code>InternalError</Code><Message>injected</Message></Error>")
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                        self.send_header(name, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))  # HEAD: the object's size
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            def _reply(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

            def log_message(self, *args):
                pass

        return Handler
