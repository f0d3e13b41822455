"""A Server-Sent Events response that always notices a client going away."""

from __future__ import annotations

from collections.abc import AsyncIterable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


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
                await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()
