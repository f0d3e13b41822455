"""Public ids: a prefix plus 26 Crockford base32 characters, sortable by creation time.

48 bits of milliseconds then 80 random bits (the ULID layout), so ``ORDER BY id`` is
creation order and ids work as opaque cursors. Within a process, an id made in the same
millisecond as the one before it (or while the clock went back) is that one plus one: the jobs
of one request, or submits that follow each other, list in the order they were made, as
their queue positions count them.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
ID_CHARS = 26


_lock = threading.Lock()
_last = 0


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def new_id(prefix: str) -> str:
    global _last
    fresh = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    with _lock:
        _last = max(fresh, _last + 1)
        return _encode(prefix, _last)


def id_floor(prefix: str, milliseconds: int) -> str:
    """The smallest id of ``prefix`` made at ``milliseconds`` since the epoch (or later): ids
    made before it sort below it, ids made then or after sort at or above it."""
    return _encode(prefix, max(0, min(milliseconds, 2**48 - 1)) << 80)


def _encode(prefix: str, value: int) -> str:
    chars = []
    for _ in range(ID_CHARS):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return f"{prefix}_{''.join(reversed(chars))}"
