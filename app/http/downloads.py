"""File downloads streamed a line at a time, never built whole in memory."""

from __future__ import annotations

from collections.abc import Iterator

from starlette.responses import StreamingResponse


class CsvDownload(StreamingResponse):
    def __init__(self, lines: Iterator[str], *, filename: str) -> None:
        super().__init__(
            lines,
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
