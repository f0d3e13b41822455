"""Prices in force and the ledger."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.billing.models import Charge, Price
from app.billing.rules import Cost, job_cost
from app.core.errors import Conflict, FluxgateError
from app.core.orm import utcnow

logger = logging.getLogger("fluxgate.billing")


class NoPriceError(FluxgateError):
    """A model without a price row in force: an operator's omission, not the caller's."""

    status_code = 503
    code = "price_unavailable"


def price_in_force(session: Session, *, model: str, at: datetime | None = None) -> Price:
    """The newest price row for ``model`` that took effect at or before ``at``."""
    at = at or utcnow()
    price = session.scalar(
        select(Price)
        .where(Price.model == model, Price.effective_from <= at)
        .order_by(Price.effective_from.desc())
        .limit(1)
    )
    if price is None:
        logger.error(
            "no price in force for %s: add a price row (fluxgate migrate seeds them)", model
        )
        raise NoPriceError(f"no price in force for {model}")
    return price


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
) -> Charge:
    """Add the job's ledger row; the unique ``job_id`` makes a second charge impossible."""
    charge = Charge(
        job_id=job_id,
        api_key_id=api_key_id,
        model=model,
        price_id=price_id,
        amount_nanos=amount_nanos,
    )
    session.add(charge)
    session.flush()
    return charge


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
