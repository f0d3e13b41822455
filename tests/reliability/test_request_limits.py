"""How much a client may send, and how slowly, over raw sockets: headers too large or too
many (431), a head or a body that trickles in (408), a client that leaves mid-body (logged as
INFO, never a traceback). Every refusal is in the envelope and closes the connection. The test
stacks give slow clients 3 s (FLUXGATE_REQUEST_*_TIMEOUT_SECONDS)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from tests.harness.stack import Stack
from tests.helpers import vm_hwm

READ_TIMEOUT = 3.0  # the test stacks' header and body timeouts


def connect(stack: Stack) -> socket.socket:
    url = urlsplit(stack.api_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=15)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one answer; then the connection must be closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def assert_closed(sock: socket.socket) -> None:
    sock.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""


def envelope_code(body: bytes) -> str:
    error = json.loads(body)["error"]
    assert error["message"]
    return str(error["code"])


def head(extra: bytes = b"") -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + extra + b"\r\n"


@pytest.mark.parametrize(
    "request_head",
    [
        head(b"X-Big: " + b"a" * 40_000 + b"\r\n"),  # one header past 32 KiB in all
        head(b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 300) for i in range(120))),  # many, long
        head(b"".join(b"X-H%d: 1\r\n" % i for i in range(101))),  # 101 headers, max 100
        b"GET /healthz?" + b"q" * 40_000 + b" HTTP/1.1\r\nHost: test\r\n\r\n",  # the URL
    ],
)
def test_headers_too_large_or_too_many_are_431(stack: Stack, request_head: bytes) -> None:
    with connect(stack) as sock:
        sock.sendall(request_head)
        status, headers, body = read_answer(sock)
        assert status == 431
        assert headers["connection"] == "close"
        assert envelope_code(body) == "request_header_fields_too_large"
        assert_closed(sock)


def test_a_64_mib_header_is_refused_without_being_held(stack: Stack) -> None:
    """The probe's 64 MB header was read whole (RSS 173 -> 303 MB) and answered 200."""
    api = stack.process("api").popen.pid
    before = vm_hwm(api)
    with connect(stack) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Huge: ")

        def flood() -> None:
            with contextlib.suppress(OSError):
                for _ in range(1024):  # 64 MiB
                    sock.sendall(b"a" * 65536)

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        status, _, body = read_answer(sock)
        sender.join(timeout=30)
    assert status == 431
    assert envelope_code(body) == "request_header_fields_too_large"
    assert vm_hwm(api) - before < 16 * 2**20


def test_headers_within_the_limits_are_served(stack: Stack) -> None:
    with connect(stack) as sock:
        sock.sendall(head(b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(98))))
        status, _, body = read_answer(sock)
        assert status == 200, body


def test_a_head_that_trickles_in_is_408(stack: Stack) -> None:
    with connect(stack) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        try:
            for _ in range(40):  # a header line a byte every 0.25 s: 10 s if allowed
                sock.sendall(b"X")
                time.sleep(0.25)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = read_answer(sock)
        assert status == 408
        assert envelope_code(body) == "request_timeout"
        assert time.monotonic() - started < READ_TIMEOUT + 2
        assert_closed(sock)


def test_a_body_that_trickles_in_is_408(stack: Stack, api_key: str) -> None:
    """The probe's connection sending a byte every 0.5 s stayed open for 35 s+."""
    body = json.dumps({"prompt": "slowly", "width": 512, "height": 512}).encode()
    with connect(stack) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer "
            + api_key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        try:
            for byte in body[:20]:
                sock.sendall(bytes([byte]))
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, answer = read_answer(sock)
        assert status == 408
        assert headers["connection"] == "close"
        assert envelope_code(answer) == "request_timeout"
        assert time.monotonic() - started < READ_TIMEOUT + 2
        assert_closed(sock)


def test_a_connection_that_never_sends_is_closed(stack: Stack) -> None:
    with connect(stack) as sock:
        started = time.monotonic()
        assert_closed(sock)
        assert time.monotonic() - started < READ_TIMEOUT + 2


@pytest.mark.parametrize(
    "content_type", [b"application/json", b"multipart/form-data; boundary=xyz"]
)
@pytest.mark.parametrize("path", [b"/v1/jobs", b"/v1/admin/keys", b"/v1/images/generations"])
def test_a_client_leaving_mid_body_is_not_an_error(
    stack: Stack, api_key: str, path: bytes, content_type: bytes
) -> None:
    api = stack.process("api")
    logged = len(api.log())
    with connect(stack) as sock:
        sock.sendall(
            b"POST "
            + path
            + b" HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer "
            + api_key.encode()
            + b"\r\nContent-Type: "
            + content_type
            + b"\r\nContent-Length: 1000\r\n\r\n"
            + b'{"prompt": "gone'
        )
        time.sleep(0.3)
    time.sleep(1.0)
    log = api.log()[logged:]
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    assert "ERROR:" not in log, log
