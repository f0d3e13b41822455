"""Keys this process has recently authenticated, so that a submission spends no transaction
of its own on finding its key.

Only what is needed before the submission's transaction is kept: the key's id and its
per-minute limit. The submission's transaction reads the key's row again
(:func:`app.keys.service.live_key`), so a revoked key is refused from its next submission,
and budgets and concurrency limits are always the current ones. A change to a key's per-minute
limit reaches every process within :data:`KNOWN_FOR_SECONDS`. Only a SHA-256 of a key is kept.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from app.keys.models import ApiKey
from app.keys.service import hash_key

KNOWN_FOR_SECONDS = 5.0
MOST_KNOWN = 4096


@dataclass(frozen=True)
class Submitter:
    """A key allowed to submit, as its submission's transaction will find it again."""

    id: str
    rate_limit_per_minute: int | None


class KnownKeys:
    """Keys authenticated in the last :data:`KNOWN_FOR_SECONDS`, by their hash; at most
    :data:`MOST_KNOWN`, the least recently used leaving first."""

    def __init__(self) -> None:
        self._known: OrderedDict[str, tuple[float, Submitter]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, presented: str) -> Submitter | None:
        digest = hash_key(presented)
        with self._lock:
            entry = self._known.get(digest)
            if entry is None:
                return None
            if time.monotonic() >= entry[0]:
                del self._known[digest]
                return None
            self._known.move_to_end(digest)
            return entry[1]

    def remember(self, presented: str, api_key: ApiKey) -> Submitter:
        submitter = Submitter(id=api_key.id, rate_limit_per_minute=api_key.rate_limit_per_minute)
        digest = hash_key(presented)
        with self._lock:
            self._known[digest] = (time.monotonic() + KNOWN_FOR_SECONDS, submitter)
            self._known.move_to_end(digest)
            while len(self._known) > MOST_KNOWN:
                self._known.popitem(last=False)
        return submitter
