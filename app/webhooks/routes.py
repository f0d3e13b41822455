"""Webhook deliveries over HTTP: a job's deliveries for its owner; every delivery, and
redelivery, for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.core.errors import error_responses
from app.http.body import StrictJSONRoute
from app.http.deps import SessionDep
from app.jobs import service as job_service
from app.keys.deps import AdminKeyDep, ApiKeyDep
from app.webhooks import service
from app.webhooks.schemas import DeliveryList, DeliveryOut

router = APIRouter(prefix="/v1", tags=["webhooks"], route_class=StrictJSONRoute)
admin_router = APIRouter(
    prefix="/v1/admin/webhook-deliveries", tags=["admin"], route_class=StrictJSONRoute
)


@router.get(
    "/jobs/{job_id}/deliveries",
    response_model=DeliveryList,
    summary="The webhook deliveries of your job, with every attempt",
)
def job_deliveries(job_id: str, session: SessionDep, api_key: ApiKeyDep) -> DeliveryList:
    job = job_service.get_job(session, api_key=api_key, job_id=job_id)
    deliveries = service.deliveries_of_job(session, job_id=job.id)
    return DeliveryList(data=service.to_delivery_out(session, deliveries))


@admin_router.get("", response_model=DeliveryList, summary="Every key's webhook deliveries")
def list_deliveries(
    session: SessionDep,
    _admin: AdminKeyDep,
    status: Annotated[
        str | None,
        Query(description="failing (given up or retrying), pending, succeeded or failed"),
    ] = None,
    limit: Annotated[int, Query(description="1..100")] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> DeliveryList:
    deliveries, next_cursor = service.list_deliveries(
        session, state=status, limit=limit, cursor=cursor
    )
    return DeliveryList(data=service.to_delivery_out(session, deliveries), next_cursor=next_cursor)


@admin_router.get("/{delivery_id}", response_model=DeliveryOut, summary="One delivery")
def get_delivery(delivery_id: str, session: SessionDep, _admin: AdminKeyDep) -> DeliveryOut:
    delivery = service.get_delivery(session, delivery_id=delivery_id)
    return service.to_delivery_out(session, [delivery])[0]


@admin_router.post(
    "/{delivery_id}/redeliver",
    response_model=DeliveryOut,
    summary="Send the event again now, with the same webhook-id",
    responses=error_responses(409),
)
def redeliver(delivery_id: str, session: SessionDep, _admin: AdminKeyDep) -> DeliveryOut:
    delivery = service.redeliver(session, delivery_id=delivery_id)
    return service.to_delivery_out(session, [delivery])[0]
