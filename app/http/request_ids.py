"""``X-Request-ID``: the client's, when it is a plain token of at most 128 characters, else one
made here; on every answer, on every log line of the request (app/core/logs.py), and on the
jobs the request submits.

An unusable id is replaced rather than refused: the id is there to trace a request, and a
client should not fail for sending one the gateway would not log (spaces, control characters,
a whole document). The protocol's own refusals (431, 408 for a slow head) come before any
header is parsed, and carry a new id (app/http/limits.py).
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import logs

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
_ACCEPTED = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_LENGTH}}}")
_HEADER = REQUEST_ID_HEADER.lower().encode()


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(value: bytes | None) -> str | None:
    """The client's id if it may be used as it is (logged, stored, sent back), else None."""
    if value is None:
        return None
    text = value.decode("latin-1")
    return text if _ACCEPTED.fullmatch(text) else None


class RequestIds:
    """Gives each HTTP request its id, and every answer the ``X-Request-ID`` header (also the
    errors of the middlewares inside it: 413, 408). An unexpected error's 500 is sent from
    outside every middleware; its handler adds the header itself (app/main.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((value for name, value in scope["headers"] if name == _HEADER), None)
        request_id = accepted_request_id(sent) or new_request_id()
        logs.start_request(request_id)
        header = (_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                headers = [item for item in headers if item[0].lower() != _HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)
