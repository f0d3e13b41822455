"""One webhook attempt over HTTP, to an address checked just before connecting.

The host is resolved once, every address must pass the SSRF rules, and the request goes to
one of those very addresses (the URL's host kept in ``Host`` and TLS SNI), so DNS rebinding
between the check and the connection cannot reach an internal address. No redirects, no
proxies from the environment, one time limit for the whole attempt, and at most ``max_bytes``
of the answer read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace

import httpx

from app.core.settings import Network
from app.webhooks.targets import (
    Address,
    UnsafeTarget,
    WebhookTarget,
    check_webhook_url,
)

EXCERPT_CHARS = 1024
USER_AGENT = "Fluxgate-Webhooks/1"


@dataclass(frozen=True)
class SendResult:
    status_code: int | None
    error: str | None
    duration_ms: int
    excerpt: str | None = None
    refused: bool = False  # the URL failed the SSRF rules: retrying cannot help
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def outcome(self) -> str:
        """The attempt's label in the metrics: the status class, or what went wrong."""
        if self.status_code is not None:
            return f"{self.status_code // 100}xx"
        if self.refused:
            return "refused"
        return "timeout" if self.timed_out else "connection_error"


# Name lookups run here so an attempt can give up on one at its deadline (a thread stuck in
# the system resolver is left to finish on its own).
_resolvers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-dns")


def send(
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    allowed: Sequence[Network],
    timeout: float,
    max_bytes: int,
) -> SendResult:
    """One attempt, all of it (lookup, connect, send, answer) within ``timeout`` seconds: a
    receiver that trickles its answer a byte at a time is cut off like one that hangs."""
    started = time.monotonic()

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    timed_out = SendResult(None, f"no answer within {timeout:g}s", 0, timed_out=True)
    lookup = _resolvers.submit(check_webhook_url, url, allowed=allowed)
    try:
        target, addresses = lookup.result(timeout=timeout)
    except UnsafeTarget as error:
        return SendResult(None, str(error), elapsed_ms(), refused=True)
    except FutureTimeout:
        return replace(timed_out, duration_ms=elapsed_ms())
    remaining = timeout - (time.monotonic() - started)
    try:
        status, excerpt = asyncio.run(
            _post(target, addresses, body=body, headers=headers, limit=max_bytes, within=remaining)
        )
    except (TimeoutError, httpx.TimeoutException):
        return replace(timed_out, duration_ms=elapsed_ms())
    except httpx.HTTPError as error:
        return SendResult(None, f"{type(error).__name__}: {error}"[:500], elapsed_ms())
    return SendResult(status, None, elapsed_ms(), excerpt)


async def _post(
    target: WebhookTarget,
    addresses: Sequence[Address],
    *,
    body: bytes,
    headers: Mapping[str, str],
    limit: int,
    within: float,
) -> tuple[int, str | None]:
    """POST to the first of ``addresses`` that accepts a connection; the status and the start
    of the answer, at most ``limit`` bytes of it read."""
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if ":" not in target.host else f"[{target.host}]"
    if target.port != default_port:
        host_header = f"{host_header}:{target.port}"
    request_headers = {
        **headers,
        "Host": host_header,
        "User-Agent": USER_AGENT,
        # Compressed answers could expand past the limit in one chunk.
        "Accept-Encoding": "identity",
    }
    # The certificate is checked against the URL's host, not the address connected to.
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    async with (
        asyncio.timeout(within),
        httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=within) as client,
    ):
        for index, address in enumerate(addresses):
            literal = f"[{address}]" if address.version == 6 else str(address)
            request = client.build_request(
                "POST",
                f"{target.scheme}://{literal}:{target.port}{target.target}",
                content=body,
                headers=request_headers,
                extensions=extensions,
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.ConnectError:
                if index == len(addresses) - 1:
                    raise
                continue  # another checked address of the same host may answer
            try:
                received = bytearray()
                async for chunk in response.aiter_raw():
                    received.extend(chunk[: limit - len(received)])
                    if len(received) >= limit:
                        break  # enough to record; the rest is not read
            finally:
                await response.aclose()
            excerpt = bytes(received[:EXCERPT_CHARS]).decode("utf-8", "replace") or None
            return response.status_code, excerpt
    raise AssertionError("check_webhook_url returns at least one address")
