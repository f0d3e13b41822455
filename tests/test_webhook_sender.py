"""One attempt over real HTTP to a receiver on 127.0.0.1, with name resolution under the
test's control: the attempt connects to the address it checked, whatever DNS says next."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.webhooks.sender import SendResult, send
from tests.receiver import Receiver

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def attempt(url: str, *, allowed: Any = LOOPBACK, timeout: float = 2) -> SendResult:
    """One attempt with the tests' usual limits."""
    return send(
        url,
        body=b"{}",
        headers={"webhook-id": "msg_x"},
        allowed=allowed,
        timeout=timeout,
        max_bytes=65536,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``rebind.test`` resolves to 127.0.0.1 once, then to a private address (a DNS rebinding
    attacker's answers); every other name resolves normally. Returns the lookups made."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "10.255.255.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def test_the_attempt_connects_to_the_address_it_checked(
    receiver: Receiver, rebinding_dns: list[str]
) -> None:
    result = attempt(f"http://rebind.test:{receiver.port}/ok/pinned")
    assert result.status_code == 200, result.error
    assert rebinding_dns == ["rebind.test"]  # resolved once: the connection used that answer
    [received] = receiver.to("/ok/pinned")
    assert received.headers["Host"] == f"rebind.test:{receiver.port}"
    assert received.headers["webhook-id"] == "msg_x"


def test_a_name_that_resolves_to_a_private_address_is_not_connected_to(
    receiver: Receiver, rebinding_dns: list[str]
) -> None:
    rebinding_dns.append("first lookup already answered")  # the next answer is 10.255.255.1
    result = attempt(f"http://rebind.test:{receiver.port}/ok/never")
    assert result.refused
    assert result.status_code is None
    assert result.error is not None
    assert "10.255.255.1" in result.error
    assert receiver.to("/ok/never") == []


def test_plain_http_needs_an_allowed_network(receiver: Receiver) -> None:
    result = attempt(receiver.url("/ok/public-only"), allowed=())
    assert result.refused
    assert receiver.to("/ok/public-only") == []


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_deadline() -> None:
    """Each byte comes well within any per-read timeout; the attempt as a whole still ends."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
                if stop.is_set():
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return  # the gateway hung up
                time.sleep(0.1)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        result = attempt(f"http://127.0.0.1:{port}/slow", timeout=1.5)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        server.close()
    assert result.status_code is None
    assert result.error == "no answer within 1.5s"
    assert elapsed < 3
