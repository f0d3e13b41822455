"""Ids: prefixed, unique, and sorting by creation."""

from __future__ import annotations

import time

from app.core.ids import new_id


def test_ids_sort_by_creation() -> None:
    ids = [new_id("job") for _ in range(50)]
    assert all(i.startswith("job_") and len(i) == 30 for i in ids)
    assert len(set(ids)) == 50
    first = new_id("job")
    time.sleep(0.002)
    assert new_id("job") > first


def test_ids_made_in_one_millisecond_keep_their_order() -> None:
    ids = [new_id("job") for _ in range(2000)]  # many share a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
