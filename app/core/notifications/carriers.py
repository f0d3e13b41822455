"""The two ways a notification travels: Redis pub/sub (servers apart), or a Unix datagram
socket per API process in a private folder that publishers scan (everything on one machine: the
embedded default). Which one a process uses is decided in app/backends.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import redis
import redis.asyncio

logger = logging.getLogger("fluxgate.notifications")

Received = Callable[[bytes], None]
Subscribed = Callable[[], Awaitable[None]]


class Carrier(Protocol):
    def publish(self, data: bytes) -> None:
        """Send one message to every listening process; a hint, so failures may be dropped."""

    async def listen(self, received: Received, subscribed: Subscribed) -> None:
        """Hand every message to ``received`` until cancelled; await ``subscribed`` each time
        the subscription is (re)made, so the listener can catch up on what it missed."""


class RedisCarrier:
    CHANNEL = "fluxgate:job-changes"

    def __init__(self, client: redis.Redis, url: str) -> None:
        self._client = client
        # The listener's own connection lives on the event loop it listens from.
        self._url = url

    def publish(self, data: bytes) -> None:
        self._client.publish(self.CHANNEL, data)

    async def listen(self, received: Received, subscribed: Subscribed) -> None:
        while True:
            client = redis.asyncio.Redis.from_url(self._url)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.CHANNEL)
                    await subscribed()
                    while True:
                        message = await pubsub.get_message(timeout=5.0)
                        if message is not None and message.get("type") == "message":
                            received(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("job notifications from Redis interrupted; reconnecting")
                await asyncio.sleep(1.0)
            finally:
                await client.aclose()


# Datagram sockets need short paths (about 100 bytes), so they live under /tmp, in a folder
# named after the broker folder: every process of one installation finds the same one. The
# folder is created 0700 and refused if someone else owns it (see _private_folder).
_TMP = Path("/tmp")  # noqa: S108  # not TMPDIR: that may be a long path
_SOCKET_PARENT = _TMP if _TMP.is_dir() else Path(tempfile.gettempdir())


def socket_folder(broker_folder: str) -> Path:
    digest = hashlib.sha256(os.path.abspath(broker_folder).encode()).hexdigest()[:16]
    return _SOCKET_PARENT / f"fluxgate-{os.getuid()}-{digest}"


def _private_folder(path: Path) -> Path:
    """Create the socket folder, or refuse one that someone else could write into."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(f"{path} must belong to this user with mode 0700")
    return path


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, received: Received) -> None:
        self._received = received

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._received(data)


class SocketCarrier:
    def __init__(self, broker_folder: str) -> None:
        self.folder = socket_folder(broker_folder)

    def publish(self, data: bytes) -> None:
        if not self.folder.is_dir():
            return  # no API process has listened yet
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            for entry in os.scandir(self.folder):
                if not entry.name.endswith(".sock"):
                    continue
                try:
                    sender.sendto(data, entry.path)
                except (ConnectionRefusedError, FileNotFoundError):
                    # Its API process is gone.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                except BlockingIOError:
                    pass  # that listener is behind; its reconcile pass catches up

    async def listen(self, received: Received, subscribed: Subscribed) -> None:
        path = _private_folder(self.folder) / f"{os.getpid()}.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(path))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Receiver(received), sock=sock
            )
            try:
                await subscribed()
                await asyncio.Event().wait()  # until cancelled
            finally:
                transport.close()
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
