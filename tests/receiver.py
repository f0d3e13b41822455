"""A webhook receiver on 127.0.0.x for the tests: real HTTP, every request recorded.

The path picks the behaviour: ``/ok/...`` 200; ``/status/<code>/...`` that status;
``/script/<name>`` the next status of a script the test set (200 once it runs out);
``/hang/...`` never answers; ``/hangonce/...`` hangs the first time, then 200;
``/huge/...`` streams an endless 200 body (up to 1 GB);
``/redirect/...`` 302 to ``/ok/redirected``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.harness.processes import free_port, wait_until

GIGABYTE = 1024**3


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        self.requests: list[Received] = []
        self.scripts: dict[str, list[int]] = {}
        self.huge_bytes_sent: dict[str, int] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, dict(self.headers.items()), body, time.time())
                    )
                kind = self.path.split("/")[1]
                if kind == "hangonce":
                    with receiver._lock:
                        first = len(receiver.to_unlocked(self.path)) == 1
                    if first:
                        receiver.stopping.wait(60)
                        return
                    kind = "ok"
                if kind == "hang":
                    receiver.stopping.wait(60)
                    return
                if kind == "huge":
                    self._huge()
                    return
                if kind == "redirect":
                    self._answer(302, {"Location": "/ok/redirected"})
                    return
                if kind == "status":
                    self._answer(int(self.path.split("/")[2]))
                    return
                if kind == "script":
                    with receiver._lock:
                        codes = receiver.scripts.get(self.path.split("/")[2], [])
                        code = codes.pop(0) if codes else 200
                    self._answer(code)
                    return
                self._answer(200)

            def _answer(self, code: int, headers: dict[str, str] | None = None) -> None:
                payload = b'{"received": true}'
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _huge(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(GIGABYTE))
                self.end_headers()
                chunk = b"x" * 65536
                sent = 0
                try:
                    while sent < GIGABYTE and not receiver.stopping.is_set():
                        self.wfile.write(chunk)
                        sent += len(chunk)
                except OSError:
                    pass  # the gateway hung up, as it should
                finally:
                    receiver.huge_bytes_sent[self.path] = sent

        self.server = ThreadingHTTPServer((host, self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def to(self, path: str) -> list[Received]:
        with self._lock:
            return self.to_unlocked(path)

    def to_unlocked(self, path: str) -> list[Received]:
        return [request for request in self.requests if request.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 30) -> list[Received]:
        wait_until(
            lambda: len(self.to(path)) >= count, timeout=timeout, what=f"{count} posts to {path}"
        )
        return self.to(path)

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
