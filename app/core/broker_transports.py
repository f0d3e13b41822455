"""kombu's transports as Fluxgate uses them, each with a fix for a way it lost a worker.

Filesystem (the embedded default's broker): the stock transport writes a message file in place
under its final name, so a consumer that lists the folder mid-write reads an empty file and the
worker stops on a JSON error (seen with concurrent submissions). Here each message is written to
a temporary name the consumer ignores, then renamed into place: a visible message is always
complete.

Redis: when the broker goes away with messages unacknowledged (acks are late), Celery closes the
broken connection twice, and the second close tries to give those messages back through a
transport it has already torn down; the AttributeError that follows is not a connection error,
so the worker stops for good ("Unrecoverable error", seen in bench/chaos.py's Redis outage).
Here that attempt fails as a connection error, which Celery ignores before it reconnects; the
messages stay with Redis (visibility timeout) and the sweeper re-sends their jobs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from time import monotonic
from typing import Any, cast

from kombu.exceptions import ChannelError
from kombu.transport import filesystem, redis
from kombu.utils.json import dumps

_dumps = cast(Callable[[Any], str], dumps)  # kombu's JSON, which its consumer reads


class AtomicChannel(filesystem.Channel):
    # kombu's own bases disagree on this parameter's name (payload / message).
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        # Consumers only take "<stamp>_<uuid>.<queue>.msg"; ".<uuid>.partial" never matches.
        partial = os.path.join(self.data_folder_out, f".{uuid.uuid4()}.partial")
        try:
            with open(partial, "wb") as handle:
                handle.write(_dumps(payload).encode())
            os.replace(partial, os.path.join(self.data_folder_out, name))
        except OSError as error:
            raise ChannelError(f"cannot add message {name!r} to the broker folder") from error


class AtomicFilesystemTransport(filesystem.Transport):
    Channel = AtomicChannel


class RecoveringRedisChannel(redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # the transport was torn down by an earlier close
            raise ConnectionResetError("the connection to Redis is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class RecoveringRedisTransport(redis.Transport):
    Channel = RecoveringRedisChannel
