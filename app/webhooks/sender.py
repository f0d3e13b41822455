"""One webhook attempt over HTTP, to an address checked just before connecting.

The host is resolved once, every address must pass the SSRF rules, and the request goes to
that very address (the URL's host kept in ``Host`` and TLS SNI), so DNS rebinding between the
check and the connection cannot reach an internal address. No redirects, no proxies from the
environment, a time limit, and at most ``max_bytes`` of the answer read.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from app.webhooks.targets import Network, UnsafeTarget, check_webhook_url

EXCERPT_CHARS = 1024
USER_AGENT = "Fluxgate-Webhooks/1"


@dataclass(frozen=True)
class SendResult:
    status_code: int | None
    error: str | None
    duration_ms: int
    excerpt: str | None = None
    refused: bool = False  # the URL failed the SSRF rules: retrying cannot help

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def send(
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    allowed: Sequence[Network],
    timeout: float,
    max_bytes: int,
) -> SendResult:
    started = time.monotonic()

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        target, addresses = check_webhook_url(url, allowed=allowed)
    except UnsafeTarget as error:
        return SendResult(None, str(error), elapsed_ms(), refused=True)
    address = addresses[0]
    literal = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if ":" not in target.host else f"[{target.host}]"
    if target.port != default_port:
        host_header = f"{host_header}:{target.port}"
    request_headers = {
        **headers,
        "Host": host_header,
        "User-Agent": USER_AGENT,
        # Compressed answers could expand past max_bytes in one chunk.
        "Accept-Encoding": "identity",
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with (
            httpx.Client(
                trust_env=False, follow_redirects=False, timeout=httpx.Timeout(timeout)
            ) as client,
            client.stream(
                "POST",
                f"{target.scheme}://{literal}:{target.port}{target.target}",
                content=body,
                headers=request_headers,
                extensions=extensions,
            ) as response,
        ):
            received = bytearray()
            for chunk in response.iter_raw():
                received.extend(chunk[: max_bytes - len(received)])
                if len(received) >= max_bytes or time.monotonic() - started > timeout:
                    break  # enough to record; the rest is not read
            excerpt = bytes(received[:EXCERPT_CHARS]).decode("utf-8", "replace") or None
            return SendResult(response.status_code, None, elapsed_ms(), excerpt)
    except httpx.TimeoutException:
        return SendResult(None, f"no answer within {timeout:g}s", elapsed_ms())
    except httpx.HTTPError as error:
        return SendResult(None, f"{type(error).__name__}: {error}"[:500], elapsed_ms())
