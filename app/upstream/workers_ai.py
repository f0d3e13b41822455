"""Client for the Cloudflare Workers AI REST endpoint (FLUX.2). httpx only: no web or queue imports.

Requests are always multipart/form-data with the documented field names, even prompt-only
ones: the endpoint refuses JSON. Every failure becomes an :class:`UpstreamError` that says
whether trying again can help.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from app.core import metrics
from app.upstream import catalog

# Documented error codes (workers-ai.md), and 3021 which users report.
RETRYABLE_CODES = frozenset({3007, 3008, 3021, 3040})
FINAL_CODES = frozenset({5007, 5004, 3003, 3023, 3041, 3042, 3006, 3036})
_ERROR_NAMES = {
    3007: "upstream_timeout",
    3008: "upstream_timeout",
    3021: "upstream_rate_limited",
    3040: "upstream_capacity",
    3036: "upstream_quota_exhausted",
    3023: "upstream_forbidden",
    3041: "upstream_forbidden",
    3006: "upstream_invalid_request",
    3003: "upstream_invalid_request",
    5004: "upstream_invalid_request",
    5007: "upstream_invalid_request",
    3042: "upstream_invalid_request",
}
# What each failure means, in our words: a job's error message is always a sentence of ours,
# with Workers AI's own words after it, quoted and cleaned (see _their_words).
_ERROR_SENTENCES = {
    "upstream_timeout": "Workers AI timed out",
    "upstream_rate_limited": "Workers AI refused the call: the account's rate limit was reached",
    "upstream_capacity": "Workers AI was out of capacity",
    "upstream_quota_exhausted": "the Cloudflare account has used up its Workers AI allowance",
    "upstream_forbidden": "Workers AI refused the account's token or access",
    "upstream_invalid_request": "Workers AI refused the request as invalid",
    "upstream_unavailable": "Workers AI failed",
    "upstream_error": "Workers AI refused the request",
}
THEIR_WORDS_MAX_CHARS = 300
# A Python repr such as <_io.BytesIO object at 0x7f...>: never part of a message we keep.
_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")
# What went wrong on the way, by httpx's exception (the first that matches), in our words.
_TRANSPORT_FAILURES: tuple[tuple[type[httpx.HTTPError], str], ...] = (
    (httpx.ConnectTimeout, "connecting took longer than FLUXGATE_UPSTREAM_CONNECT_TIMEOUT_SECONDS"),
    (httpx.ReadTimeout, "no answer within FLUXGATE_UPSTREAM_TIMEOUT_SECONDS"),
    (httpx.WriteTimeout, "sending the request took too long"),
    (httpx.PoolTimeout, "no connection was free in time"),
    (httpx.ConnectError, "the connection could not be made"),
    (httpx.RemoteProtocolError, "the connection broke off mid-answer"),
    (httpx.NetworkError, "the connection broke"),
    (httpx.ProxyError, "the proxy refused the connection"),
    (httpx.DecodingError, "the answer could not be decoded"),
)
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # a 1920x1920 PNG in base64 is far below this


@dataclass(frozen=True)
class InputImage:
    data: bytes
    content_type: str


@dataclass(frozen=True)
class GenerationRequest:
    upstream_model: str  # "@cf/black-forest-labs/flux-2-klein-4b"
    prompt: str
    width: int
    height: int
    seed: int | None = None
    guidance: float | None = None
    steps: int | None = None  # only sent where the model takes it (flux-2-dev)
    input_images: Sequence[InputImage] = field(default_factory=tuple)

    def multipart(self) -> list[tuple[str, tuple[str | None, bytes | str, str | None]]]:
        """Every field as a form-data part; text fields have no filename."""
        parts: list[tuple[str, tuple[str | None, bytes | str, str | None]]] = [
            ("prompt", (None, self.prompt, None)),
            ("width", (None, str(self.width), None)),
            ("height", (None, str(self.height), None)),
        ]
        if self.seed is not None:
            parts.append(("seed", (None, str(self.seed), None)))
        if self.guidance is not None:
            parts.append(("guidance", (None, repr(self.guidance), None)))
        if self.steps is not None:
            parts.append(("steps", (None, str(self.steps), None)))
        for index, image in enumerate(self.input_images):
            extension = image.content_type.split("/")[-1]
            parts.append(
                (
                    f"input_image_{index}",
                    (f"input_{index}.{extension}", image.data, image.content_type),
                )
            )
        return parts


@dataclass(frozen=True)
class GenerationResult:
    image: bytes
    neurons: str | None
    duration_ms: int


class UpstreamError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        upstream_code: int | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        duration_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.upstream_code = upstream_code
        self.http_status = http_status
        self.retry_after = retry_after
        self.duration_ms = duration_ms

    @classmethod
    def bad_response(
        cls, message: str, *, duration_ms: int | None = None, http_status: int = 200
    ) -> UpstreamError:
        """An answer we cannot use (garbled, not an image, wrong size): worth another try."""
        return cls(
            "upstream_bad_response",
            message,
            retryable=True,
            http_status=http_status,
            duration_ms=duration_ms,
        )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify_failure(
    http_status: int, body: Any, *, retry_after: float | None, duration_ms: int
) -> UpstreamError:
    """Turn a non-success answer into an error with its retry decision."""
    upstream_code: int | None = None
    their_message: object = None
    if isinstance(body, dict):
        errors = body.get("errors") or []
        if errors and isinstance(errors[0], dict):
            raw_code = errors[0].get("code")
            upstream_code = raw_code if isinstance(raw_code, int) else None
            their_message = errors[0].get("message")
    if upstream_code in RETRYABLE_CODES:
        retryable = True
    elif upstream_code in FINAL_CODES:
        retryable = False
    else:
        # Cloudflare's own clients retry these.
        retryable = http_status in (408, 409, 429) or http_status >= 500
    if upstream_code in _ERROR_NAMES:
        code = _ERROR_NAMES[upstream_code]
    elif http_status in (401, 403):
        code = "upstream_forbidden"
    elif http_status >= 500:
        code = "upstream_unavailable"
    elif http_status == 429:
        code = "upstream_rate_limited"
    else:
        code = "upstream_error"
    where = f"error {upstream_code}" if upstream_code is not None else f"HTTP {http_status}"
    said = _their_words(their_message)
    message = f"{_ERROR_SENTENCES[code]} ({where}{f': {said}' if said else ''})"
    return UpstreamError(
        code,
        message,
        retryable=retryable,
        upstream_code=upstream_code,
        http_status=http_status,
        retry_after=retry_after,
        duration_ms=duration_ms,
    )


def _their_words(message: object) -> str:
    """Workers AI's own message, fit to quote in ours: text only, on one line, without Python
    reprs, at most THEIR_WORDS_MAX_CHARS characters; "" if it sent none."""
    if not isinstance(message, str):
        return ""
    text = " ".join(_REPR.sub("(an object)", message).split())
    if len(text) > THEIR_WORDS_MAX_CHARS:
        text = text[: THEIR_WORDS_MAX_CHARS - 3] + "..."
    return f'"{text}"' if text else ""


def _transport_failure(error: httpx.HTTPError) -> str:
    for kind, words in _TRANSPORT_FAILURES:
        if isinstance(error, kind):
            return words
    return "a network error"


class WorkersAIClient:
    """Thread-safe; share one per process so all calls use one connection pool."""

    def __init__(
        self,
        *,
        base_url: str,
        account_id: str,
        api_token: str,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base = f"{base_url.rstrip('/')}/accounts/{account_id}/ai/run/"
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {api_token}"},
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """One call, counted in the metrics by model and outcome."""
        model = catalog.model_name(request.upstream_model)
        metrics.UPSTREAM_IN_FLIGHT.inc()
        started = time.monotonic()
        try:
            result = self._generate(request)
        except UpstreamError as error:
            metrics.UPSTREAM_CALLS.labels(model, call_outcome(error)).inc()
            if error.http_status == 429:
                metrics.UPSTREAM_THROTTLED.inc()
            raise
        finally:
            metrics.UPSTREAM_IN_FLIGHT.dec()
            metrics.UPSTREAM_DURATION.labels(model).observe(time.monotonic() - started)
        metrics.UPSTREAM_CALLS.labels(model, "200").inc()
        return result

    def _generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.monotonic()

        def elapsed_ms() -> int:
            return int((time.monotonic() - started) * 1000)

        outgoing = self._http.build_request(
            "POST", self._base + request.upstream_model, files=request.multipart()
        )
        # The form joined into one body: sent as it is built, it took a write per part.
        outgoing.read()
        try:
            response = self._http.send(outgoing, stream=True)
            try:
                raw = _read_capped(response)
            finally:
                response.close()
        except httpx.TimeoutException as error:
            raise UpstreamError(
                "upstream_timeout",
                f"Workers AI did not answer in time ({_transport_failure(error)})",
                retryable=True,
                duration_ms=elapsed_ms(),
            ) from None
        except httpx.HTTPError as error:
            raise UpstreamError(
                "upstream_unreachable",
                f"could not reach Workers AI ({_transport_failure(error)})",
                retryable=True,
                duration_ms=elapsed_ms(),
            ) from None
        duration_ms = elapsed_ms()

        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if (
            response.status_code != 200
            or not isinstance(body, dict)
            or body.get("success") is not True
        ):
            if response.status_code == 200:
                raise UpstreamError.bad_response(
                    "Workers AI answered 200 without a success envelope", duration_ms=duration_ms
                )
            raise classify_failure(
                response.status_code,
                body,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                duration_ms=duration_ms,
            )

        result = body.get("result")
        encoded = result.get("image") if isinstance(result, dict) else None
        if not isinstance(encoded, str):
            raise UpstreamError.bad_response(
                "Workers AI success envelope carried no image", duration_ms=duration_ms
            )
        try:
            image = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise UpstreamError.bad_response(
                "Workers AI returned an image that is not valid base64", duration_ms=duration_ms
            ) from None
        neurons = response.headers.get("cf-ai-neurons")
        return GenerationResult(
            image=image, neurons=neurons[:32] if neurons else None, duration_ms=duration_ms
        )


_OUTCOMES = {"upstream_timeout": "timeout", "upstream_unreachable": "connection_error"}


def call_outcome(error: UpstreamError) -> str:
    """A failed call's label in the metrics: the Workers AI error code where it sent one, else
    its HTTP status, else what went wrong on the way."""
    if error.upstream_code is not None:
        return str(error.upstream_code)
    if error.code in _OUTCOMES:
        return _OUTCOMES[error.code]
    if error.code == "upstream_bad_response":
        return "bad_response"
    return str(error.http_status) if error.http_status is not None else error.code


def _read_capped(response: httpx.Response) -> bytes:
    chunks = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            raise UpstreamError.bad_response(
                "Workers AI answer exceeded the size limit", http_status=response.status_code
            )
        chunks.append(chunk)
    return b"".join(chunks)
