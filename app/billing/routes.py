"""``/v1/models`` (what can be run, within which limits, at which prices today), usage for a
key and for everyone, and the price list."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from app.billing import service as billing_service
from app.billing import usage
from app.billing.schemas import (
    ModelList,
    PriceCreate,
    PriceList,
    PriceOut,
    UsageOut,
    model_out,
    price_out,
    usage_out,
)
from app.billing.service import prices_in_force
from app.core.errors import error_responses
from app.core.orm import utcnow
from app.http.body import StrictJSONRoute
from app.http.deps import SessionDep
from app.http.downloads import CsvDownload
from app.keys.deps import AdminKeyDep, ApiKeyDep
from app.upstream import catalog

router = APIRouter(prefix="/v1", tags=["billing"], route_class=StrictJSONRoute)


@router.get("/models", response_model=ModelList, summary="Models, their limits and current prices")
def list_models(session: SessionDep, _api_key: ApiKeyDep) -> ModelList:
    prices = prices_in_force(session, models=list(catalog.MODELS))
    return ModelList(data=[model_out(spec, prices[spec.id]) for spec in catalog.MODELS.values()])


# ---- usage -------------------------------------------------------------------------------


def _usage_response(
    session: Session,
    *,
    start: str | None,
    end: str | None,
    tz: str | None,
    group_by: usage.GroupBy,
    api_key_id: str | None,
    as_csv: bool,
) -> UsageOut | Response:
    span = usage.window(start=start, end=end, tz=tz, now=utcnow())
    rows = usage.usage(
        session,
        start=span.start,
        end=span.end,
        group_by=group_by,
        tz=span.tz,
        api_key_id=api_key_id,
    )
    if as_csv:
        return CsvDownload(usage.csv_lines(rows, group_by=group_by), filename="fluxgate-usage.csv")
    return usage_out(rows, start=span.start, end=span.end, group_by=group_by, tz=span.tz.key)


FromQuery = Annotated[
    str | None, Query(alias="from", description="date (midnight in tz) or ISO time, inclusive")
]
ToQuery = Annotated[str | None, Query(description="date (midnight in tz) or ISO time, exclusive")]
TzQuery = Annotated[
    str | None,
    Query(description="IANA time zone of days, hours and dates, e.g. Asia/Kolkata; default UTC"),
]


@router.get(
    "/usage",
    response_model=UsageOut,
    summary="Your usage: jobs, tiles, charged USD",
    responses={200: {"content": {"text/csv": {}}}},
)
def own_usage(
    api_key: ApiKeyDep,
    session: SessionDep,
    start: FromQuery = None,
    to: ToQuery = None,
    tz: TzQuery = None,
    group_by: Literal["hour", "day", "model"] = "day",
    format: Literal["json", "csv"] = "json",
) -> UsageOut | Response:
    return _usage_response(
        session,
        start=start,
        end=to,
        tz=tz,
        group_by=group_by,
        api_key_id=api_key.id,
        as_csv=format == "csv",
    )


admin_router = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=StrictJSONRoute)


@admin_router.get(
    "/usage",
    response_model=UsageOut,
    summary="Everyone's usage; format=csv for a download",
    responses={200: {"content": {"text/csv": {}}}},
)
def all_usage(
    _admin: AdminKeyDep,
    session: SessionDep,
    start: FromQuery = None,
    to: ToQuery = None,
    tz: TzQuery = None,
    group_by: Literal["hour", "day", "model", "key"] = "day",
    key_id: Annotated[str | None, Query(description="only this key")] = None,
    format: Literal["json", "csv"] = "json",
) -> UsageOut | Response:
    return _usage_response(
        session,
        start=start,
        end=to,
        tz=tz,
        group_by=group_by,
        api_key_id=key_id,
        as_csv=format == "csv",
    )


# ---- prices ------------------------------------------------------------------------------


@admin_router.get("/prices", response_model=PriceList, summary="Every price, past and future")
def list_prices(_admin: AdminKeyDep, session: SessionDep) -> PriceList:
    return PriceList(data=[price_out(price) for price in billing_service.list_prices(session)])


@admin_router.post(
    "/prices",
    status_code=201,
    response_model=PriceOut,
    summary="Add a price from a date on",
    responses=error_responses(409),
)
def add_price(body: PriceCreate, _admin: AdminKeyDep, session: SessionDep) -> PriceOut:
    price = billing_service.add_price(session, price=body.to_price())
    return price_out(price)
