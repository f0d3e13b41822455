"""One attempt over real HTTP to a receiver on 127.0.0.1, with name resolution under the
test's control: the attempt connects to the address it checked, whatever DNS says next."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from app.webhooks.sender import send
from tests.receiver import Receiver

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


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
    result = send(
        f"http://rebind.test:{receiver.port}/ok/pinned",
        body=b"{}",
        headers={"webhook-id": "msg_x"},
        allowed=LOOPBACK,
        timeout=2,
        max_bytes=65536,
    )
    assert result.status_code == 200, result.error
    assert rebinding_dns == ["rebind.test"]  # resolved once: the connection used that answer
    [received] = receiver.to("/ok/pinned")
    assert received.headers["Host"] == f"rebind.test:{receiver.port}"
    assert received.headers["webhook-id"] == "msg_x"


def test_a_name_that_resolves_to_a_private_address_is_not_connected_to(
    receiver: Receiver, rebinding_dns: list[str]
) -> None:
    rebinding_dns.append("first lookup already answered")  # the next answer is 10.255.255.1
    result = send(
        f"http://rebind.test:{receiver.port}/ok/never",
        body=b"{}",
        headers={},
        allowed=LOOPBACK,
        timeout=2,
        max_bytes=65536,
    )
    assert result.refused
    assert result.status_code is None
    assert result.error is not None
    assert "10.255.255.1" in result.error
    assert receiver.to("/ok/never") == []


def test_plain_http_needs_an_allowed_network(receiver: Receiver) -> None:
    result = send(
        receiver.url("/ok/public-only"),
        body=b"{}",
        headers={},
        allowed=(),
        timeout=2,
        max_bytes=65536,
    )
    assert result.refused
    assert receiver.to("/ok/public-only") == []
