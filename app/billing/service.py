"""Prices in force and the ledger."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.billing.models import Charge, Price
from app.billing.rules import Cost, job_cost
from app.core.errors import Conflict, FluxgateError
from app.core.orm import insert_into, utcnow

logger = logging.getLogger("fluxgate.billing")


class NoPriceError(FluxgateError):
    """A model without a price row in force: an operator's omission, not the caller's."""

    status_code = 503
    code = "price_unavailable"


# Each model's prices, read at most once this long per process (and database): a submission
# finds its price in memory. Prices are only ever added, and a price added ahead of its start,
# as prices are, is read before it applies; one whose start has already passed applies within
# this long of being added.
PRICE_SCHEDULE_SECONDS = 1.0


@dataclass(frozen=True)
class _Schedule:
    read_at: float
    prices: tuple[Price, ...]  # by effective_from; unattached rows, safe to share


_schedules: dict[tuple[str, str], _Schedule] = {}
_schedules_lock = threading.Lock()


def _price_schedule(session: Session, *, model: str) -> tuple[Price, ...]:
    key = (str(session.get_bind().engine.url), model)
    schedule = _schedules.get(key)
    if schedule is None or time.monotonic() - schedule.read_at >= PRICE_SCHEDULE_SECONDS:
        with _schedules_lock:  # one reader per process when a schedule runs out
            schedule = _schedules.get(key)
            if schedule is None or time.monotonic() - schedule.read_at >= PRICE_SCHEDULE_SECONDS:
                rows = session.execute(
                    select(Price.__table__)
                    .where(Price.model == model)
                    .order_by(Price.effective_from)
                ).mappings()
                schedule = _Schedule(time.monotonic(), tuple(Price(**row) for row in rows))
                _schedules[key] = schedule
    return schedule.prices


def price_in_force(session: Session, *, model: str, at: datetime | None = None) -> Price:
    """The newest price row for ``model`` that took effect at or before ``at``."""
    at = at or utcnow()
    for price in reversed(_price_schedule(session, model=model)):
        if price.effective_from <= at:
            return price
    logger.error("no price in force for %s: add a price row (fluxgate migrate seeds them)", model)
    raise NoPriceError(f"no price in force for {model}")


def prices_in_force(session: Session, *, models: Sequence[str]) -> dict[str, Price]:
    return {model: price_in_force(session, model=model) for model in models}


def estimate(
    price: Price,
    *,
    width: int,
    height: int,
    steps: int,
    input_sizes: Sequence[tuple[int, int]] = (),
) -> Cost:
    return job_cost(
        price.schedule(), width=width, height=height, steps=steps, input_sizes=input_sizes
    )


def record_charge(
    session: Session, *, job_id: str, api_key_id: str, model: str, price_id: int, amount_nanos: int
) -> None:
    """Add the job's ledger row; the unique ``job_id`` makes a second charge impossible (the
    insert raises at once). A plain insert: a unit of work for one row cost the worker more
    than the statement."""
    session.execute(
        insert_into(Charge),
        {
            "job_id": job_id,
            "api_key_id": api_key_id,
            "model": model,
            "price_id": price_id,
            "amount_nanos": amount_nanos,
        },
    )


def list_prices(session: Session) -> list[Price]:
    return list(session.scalars(select(Price).order_by(Price.model, Price.effective_from)))


def add_price(session: Session, *, price: Price) -> Price:
    """A new price for a model from ``effective_from`` on; jobs submitted earlier keep theirs.
    One price per model and start: another is a 409, also when two are added at once."""
    try:
        with session.begin_nested():
            session.add(price)
    except IntegrityError:
        raise Conflict(
            f"{price.model} already has a price starting {price.effective_from.isoformat()}",
            code="price_exists",
        ) from None
    return price
