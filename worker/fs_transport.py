"""kombu's filesystem transport (the embedded default's broker), with messages published
atomically.

The stock transport writes a message file in place under its final name, so a consumer that
lists the folder mid-write reads an empty file and the worker stops on a JSON error (seen with
concurrent submissions). Here each message is written to a temporary name the consumer ignores,
then renamed into place: a visible message is always complete.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from time import monotonic
from typing import Any, cast

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
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
