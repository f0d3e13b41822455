"""A TCP proxy on 127.0.0.1 in front of a real server (PostgreSQL, Redis), which a test or the
chaos script takes down and brings back: an outage of that server as its clients see it
(every open connection cut, new ones refused), without stopping the server for anyone else."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

from tests.harness.processes import free_port
from tests.harness.stack import Stack


class FaultProxy:
    """A proxy from a free port on 127.0.0.1 to ``target_host:target_port``; up once made."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.up()

    def _run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=10)

    def up(self) -> None:
        """Accept connections again (on the same port)."""

        async def listen() -> None:
            if self._server is None:
                self._server = await asyncio.start_server(
                    self._handle, "127.0.0.1", self.port, reuse_address=True
                )

        self._run(listen())

    def down(self) -> None:
        """Refuse new connections and cut every open one."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._run(stop())

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.down()
        try:
            yield
        finally:
            self.up()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()
                self._writers.discard(sink)

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


class Proxies:
    """PostgreSQL and Redis of a PostgreSQL stack, each behind a FaultProxy, for the processes
    started from now on (the stack's own SQL still goes straight to the server)."""

    def __init__(self, stack: Stack, *, database: bool = True) -> None:
        if stack.redis is None:
            raise ValueError("fault proxies need a PostgreSQL + Redis stack")
        url = urlsplit(stack.database_url)
        host, port = url.hostname or "127.0.0.1", url.port or 5432
        self.postgres = FaultProxy(host, port)
        server = urlsplit(stack.redis.server_url)
        self.redis = FaultProxy(server.hostname or "127.0.0.1", server.port or 6379)
        if database:
            stack.env["FLUXGATE_DATABASE_URL"] = stack.database_url.replace(
                f"{host}:{port}", f"127.0.0.1:{self.postgres.port}"
            )
        stack.env["FLUXGATE_REDIS_URL"] = (
            f"redis://127.0.0.1:{self.redis.port}/{stack.redis.number}"
        )

    def close(self) -> None:
        self.postgres.close()
        self.redis.close()
