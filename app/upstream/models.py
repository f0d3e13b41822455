"""The upstream limiter's table (see app/upstream/gate.py)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer
from sqlalchemy.orm import Mapped, mapped_column

from app.core.orm import Base


class UpstreamGate(Base):
    """The account-wide upstream rate limiter's state where no Redis is configured: one row.

    GCRA: ``tat_us`` is the theoretical arrival time of the next call (microseconds since the
    epoch); ``paused_until_us`` holds every worker back after the upstream answered 429.
    """

    __tablename__ = "upstream_gate"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tat_us: Mapped[int] = mapped_column(BigInteger, default=0)
    paused_until_us: Mapped[int] = mapped_column(BigInteger, default=0)
