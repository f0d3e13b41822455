"""A Server-Sent Events response that always notices a client going away."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

logger = logging.getLogger("fluxgate.api")


class EventStreamResponse(StreamingResponse):
    """``text/event-stream``, unbuffered. Starlette watches for disconnects only under older
    ASGI servers; here the stream is cancelled the moment the client leaves, whatever the
    server, so its watcher is freed at once and not at the next keep-alive."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterable[str], status_code: int = 200) -> None:
        super().__init__(
            content,
            status_code=status_code,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except Exception:
                    # The answer has started: all that is left is to end it and say why.
                    logger.exception("event stream failed")
                finally:
                    group.cancel_scope.cancel()

            group.start_soon(stream)
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()
        # Cancelled while sending, the generator sits at a yield: close it now, so its watcher
        # goes at once rather than whenever it is garbage-collected.
        close = getattr(self.body_iterator, "aclose", None)
        if close is not None:
            await close()
