"""How much a client may send and for how long, before and while a route reads it.

The request head is bounded in the HTTP protocol itself (uvicorn's httptools protocol keeps
any head in memory, however large, and waits for it forever): its size and number of lines
(431) and the time to send it (408). The body is bounded by :class:`RequestBodyLimits`: its
size (413) and the time to send it (408). Every refusal closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core import logs
from app.core.settings import get_settings
from app.http.request_ids import new_request_id

logger = logging.getLogger("fluxgate.api")
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_LINGER_SECONDS = 1.0
# The end of a request head: CRLF CRLF, or the bare LF LF that parsers also accept.
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


def _head_end(window: bytes) -> int:
    """The offset just past the first end of a head in ``window``, or -1."""
    ends = [window.find(end) + len(end) for end in _HEAD_ENDS if end in window]
    return min(ends) if ends else -1


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head that is too large, has too many
    lines, or is sent too slowly, before httptools buffers it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._max_head_bytes = settings.max_header_bytes
        self._max_headers = settings.max_headers
        self._head_timeout = settings.request_header_timeout_seconds
        self._in_head = True
        self._head_bytes = 0
        self._head_lines = 0
        self._tail = b""  # the last bytes seen, for an end of head split across reads
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            window = self._tail + data
            end = _head_end(window)
            head = data if end < 0 else data[: max(0, end - len(self._tail))]
            self._head_bytes += len(head)
            self._head_lines += head.count(b"\n")
            self._tail = window[-3:]
            if self._head_bytes > self._max_head_bytes:
                self._refuse(431, f"the request head exceeds {self._max_head_bytes} bytes")
                return
            # Lines: the request line, one per header, and the empty line that ends the head.
            if self._head_lines > self._max_headers + 2:
                self._refuse(431, f"the request has more than {self._max_headers} headers")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = self._head_lines = 0
        self._tail = b""
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True  # what comes next on this connection is the next request's head
        super().on_message_complete()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_bytes == 0:
            self.transport.close()  # connected but never began a request: nobody to answer
        else:
            self._refuse(408, f"the request head was not received within {self._head_timeout:g}s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer in the contract's envelope and close; no route has seen the request."""
        self._refused = True
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's head, while the one before it is still being answered:
            # nothing can be written without breaking that answer.
            self.transport.close()
            return
        code = "request_timeout" if status == 408 else "request_header_fields_too_large"
        body = json.dumps({"error": {"code": code, "message": message, "param": None}}).encode()
        # The client's X-Request-ID is somewhere in the head refused unread: a new id, logged,
        # so that the answer can still be found in the log.
        request_id = new_request_id()
        with logs.bound(request_id=request_id):
            logger.info("request head refused: %d %s", status, message)
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-request-id: %s\r\nconnection: close\r\n\r\n"
            % (status, _REASONS[status], len(body), request_id.encode())
        )
        self.transport.write(head + body)
        # Close gently: the answer first, then keep reading (and dropping) what the client is
        # still sending for a moment, or closing with unread data would reset the connection
        # and could destroy the answer before the client reads it.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)


class RequestBodyLimits:
    """The request body may be at most ``max_bytes`` (413: refused from its declared length
    when it has one, else once the bytes received pass it) and must arrive within
    ``timeout_seconds`` of the request head (408), however slowly it trickles; for every route,
    when it reads its body. Once the body is complete, waiting on ``receive`` (for a
    disconnect) is not limited."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_seconds: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_seconds
        length = dict(scope["headers"]).get(b"content-length", b"")
        declared = int(length) if length.isdigit() else 0
        received = 0
        complete = False

        def too_large() -> HTTPException:
            # An HTTPException passes through FastAPI's body parsing unchanged.
            return HTTPException(
                413,
                f"the request body exceeds {self.max_bytes} bytes",
                headers={"Connection": "close"},
            )

        async def limited() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            if declared > self.max_bytes:
                raise too_large()
            with anyio.move_on_after(deadline - time.monotonic()) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                raise HTTPException(
                    408,
                    f"the request body was not received within {self.timeout_seconds:g}s",
                    headers={"Connection": "close"},
                )
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large()
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)
