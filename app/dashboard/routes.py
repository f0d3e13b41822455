"""The dashboard's pages and forms: adapters from HTTP to app.dashboard.views and the domains'
services. Forms post, then redirect to a page (so a reload never posts twice), except where
a secret is shown once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app.billing import reconciliation, usage
from app.billing import service as billing_service
from app.billing.schemas import PriceCreate, price_out
from app.core.errors import Forbidden, InvalidParameter
from app.core.orm import utcnow
from app.dashboard import security, sessions, thumbnails, views
from app.dashboard.deps import CurrentDep, FormDep, session_policy, session_token
from app.dashboard.forms import to_schema
from app.dashboard.rendering import render
from app.http.deps import SessionDep, SettingsDep
from app.http.downloads import CsvDownload
from app.jobs import service as job_service
from app.jobs.models import JobStatus
from app.jobs.service import JobFilters
from app.keys import service as key_service
from app.keys.schemas import KeyCreate, KeyUpdate
from app.upstream import catalog
from app.webhooks import service as webhooks

router = APIRouter(prefix=security.DASHBOARD_PREFIX, include_in_schema=False)

JOBS_PER_PAGE = 50
# A time that names its offset: ...Z or ...+05:30 / -05:00.
NAMED_ZONE = re.compile(r"(?:[zZ]|[+-]\d\d:?\d\d)$")
# Offered in the Usage page's time zone field (any IANA name is taken).
COMMON_ZONES = (
    "UTC",
    "America/Los_Angeles",
    "America/New_York",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Australia/Sydney",
)


def _see(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


# ---- login -------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return render(
        request, "login.html", current=None, title="Sign in", next=security.safe_next(next)
    )


@router.post("/login", response_class=HTMLResponse)
def log_in(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: Annotated[str, Form(max_length=200)],
    next: Annotated[str | None, Form(max_length=2000)] = None,
) -> Response:
    if not security.same_origin(request, settings):
        raise Forbidden(
            "this form was not sent from the dashboard itself", code="cross_site_request"
        )
    opened = sessions.log_in(
        session,
        presented=key,
        address=sessions.throttled_address(request.client.host if request.client else None),
        now=utcnow(),
        policy=session_policy(settings),
        max_failures=settings.admin_login_max_failures,
        window=timedelta(seconds=settings.admin_login_window_seconds),
    )
    if opened is None:
        # Answered, not raised: the failed attempt is counted when the request commits.
        return render(
            request,
            "login.html",
            current=None,
            status_code=401,
            title="Sign in",
            next=security.safe_next(next),
            error="That is not a live admin key.",
        )
    secure = security.is_secure(request, settings)
    response = _see(security.safe_next(next))
    response.set_cookie(
        value=opened.token,
        max_age=settings.admin_session_max_seconds,
        **security.cookie_options(secure),
    )
    return response


@router.post("/logout")
def log_out(
    request: Request, current: FormDep, session: SessionDep, settings: SettingsDep
) -> Response:
    token = session_token(request, settings)
    if token is not None:
        sessions.log_out(session, token=token)
    secure = security.is_secure(request, settings)
    response = _see(f"{security.DASHBOARD_PREFIX}/login")
    response.delete_cookie(**security.cookie_options(secure))
    return response


# ---- overview ----------------------------------------------------------------------------


@router.get("/")
def dashboard_slash() -> RedirectResponse:
    """``/admin/``, as people type it: the overview."""
    return RedirectResponse(security.DASHBOARD_PREFIX, status_code=308)


@router.get("", response_class=HTMLResponse)
def overview(
    request: Request,
    current: CurrentDep,
    session: SessionDep,
    days: int = 30,
    stack: Literal["model", "key"] = "model",
) -> HTMLResponse:
    if days not in views.CHART_DAYS:
        raise InvalidParameter("days must be 7, 30 or 90", param="days")
    now = utcnow()
    return render(
        request,
        "overview.html",
        current=current,
        active="/admin",
        title="Overview",
        days=days,
        stack=stack,
        chart=views.spend_chart(session, now=now, days=days, split=stack),
        spend=views.spend(session, now=now),
        health=views.health(session, now=now),
        budgets=views.budget_uses(session, now=now),
    )


# ---- keys --------------------------------------------------------------------------------

KEY_FIELDS = ("name", "budget_usd", "budget_period", "rate_limit_per_minute", "max_concurrent_jobs")
KEY_LIMITS = ("rate_limit_per_minute", "max_concurrent_jobs")


def _keys_page(
    request: Request, current: sessions.Current, session: Session, **context: Any
) -> HTMLResponse:
    return render(
        request,
        "keys.html",
        current=current,
        active="/admin/keys",
        title="Keys",
        rows=views.key_rows(session, now=utcnow()),
        **context,
    )


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request, current: CurrentDep, session: SessionDep) -> HTMLResponse:
    return _keys_page(request, current, session)


@router.post("/keys", response_class=HTMLResponse)
async def create_key(request: Request, current: FormDep, session: SessionDep) -> HTMLResponse:
    form = await request.form()
    try:
        spec = to_schema(
            KeyCreate, form, fields=(*KEY_FIELDS, "admin"), integers=KEY_LIMITS, flags=("admin",)
        )
    except InvalidParameter as error:
        return _keys_page(request, current, session, status_code=422, error=error.message)
    created = key_service.create_key_as(session, spec=spec)
    # Shown here once, never again: this answer is not a redirect, and pages are no-store.
    return _keys_page(
        request,
        current,
        session,
        status_code=201,
        created=created.api_key,
        created_key=created.key,
        created_secret=created.api_key.webhook_secret,
    )


def _key_page(
    request: Request, current: sessions.Current, session: Session, *, key_id: str, **context: Any
) -> HTMLResponse:
    api_key = key_service.get_key(session, key_id=key_id)
    return render(
        request,
        "key.html",
        current=current,
        active="/admin/keys",
        title=api_key.name,
        key=key_service.to_key_out(session, api_key),
        **context,
    )


@router.get("/keys/{key_id}", response_class=HTMLResponse)
def key_page(
    key_id: str, request: Request, current: CurrentDep, session: SessionDep
) -> HTMLResponse:
    return _key_page(request, current, session, key_id=key_id)


@router.post("/keys/{key_id}", response_class=HTMLResponse)
async def update_key(
    key_id: str, request: Request, current: FormDep, session: SessionDep
) -> Response:
    form = await request.form()
    try:
        changes = to_schema(
            KeyUpdate,
            form,
            fields=KEY_FIELDS,
            integers=KEY_LIMITS,
            blank_is_null=("budget_usd", *KEY_LIMITS),
        ).changes()
    except InvalidParameter as error:
        return _key_page(
            request, current, session, key_id=key_id, status_code=422, error=error.message
        )
    key_service.update_key(session, key_id=key_id, changes=changes)
    return _see(f"/admin/keys/{key_id}")


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, current: FormDep, session: SessionDep) -> Response:
    key_service.revoke_key(session, key_id=key_id)
    return _see(f"/admin/keys/{key_id}")


@router.post("/keys/{key_id}/webhook-secret", response_class=HTMLResponse)
def rotate_webhook_secret(
    key_id: str, request: Request, current: FormDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    api_key = key_service.rotate_webhook_secret(
        session, key_id=key_id, grace_seconds=settings.webhook_secret_grace_seconds
    )
    return _key_page(request, current, session, key_id=key_id, new_secret=api_key.webhook_secret)


# ---- prices ------------------------------------------------------------------------------

PRICE_FIELDS = (
    "model",
    "effective_from",
    "output_unit",
    "input_unit",
    "output_unit_usd",
    "output_first_unit_usd",
    "input_unit_usd",
)


def _prices_page(
    request: Request, current: sessions.Current, session: Session, **context: Any
) -> HTMLResponse:
    return render(
        request,
        "prices.html",
        current=current,
        active="/admin/prices",
        title="Prices",
        prices=[price_out(price) for price in billing_service.list_prices(session)],
        models=list(catalog.MODELS),
        now=utcnow(),
        **context,
    )


@router.get("/prices", response_class=HTMLResponse)
def prices_page(request: Request, current: CurrentDep, session: SessionDep) -> HTMLResponse:
    return _prices_page(request, current, session)


@router.post("/prices", response_class=HTMLResponse)
async def add_price(request: Request, current: FormDep, session: SessionDep) -> Response:
    form = dict((await request.form()).items())
    when = form.get("effective_from")
    # The form's time is UTC, as its label says; a browser's datetime-local has no zone.
    if isinstance(when, str) and when and not NAMED_ZONE.search(when):
        form["effective_from"] = f"{when}Z"
    try:
        spec = to_schema(PriceCreate, form, fields=(*PRICE_FIELDS, "per_step"), flags=("per_step",))
    except InvalidParameter as error:
        return _prices_page(request, current, session, status_code=422, error=error.message)
    billing_service.add_price(session, price=spec.to_price())
    return _see("/admin/prices")


# ---- webhooks ----------------------------------------------------------------------------


@router.get("/webhooks", response_class=HTMLResponse)
def webhooks_page(
    request: Request,
    current: CurrentDep,
    session: SessionDep,
    status: str = "failing",
    cursor: str | None = None,
) -> HTMLResponse:
    deliveries, next_cursor = webhooks.list_deliveries(
        session, state=status or None, limit=50, cursor=cursor
    )
    return render(
        request,
        "webhooks.html",
        current=current,
        active="/admin/webhooks",
        title="Webhooks",
        status=status,
        deliveries=webhooks.to_delivery_out(session, deliveries),
        next_cursor=next_cursor,
    )


@router.post("/deliveries/{delivery_id}/redeliver", response_class=HTMLResponse)
def redeliver(
    delivery_id: str, request: Request, current: FormDep, session: SessionDep
) -> Response:
    delivery = webhooks.redeliver(session, delivery_id=delivery_id)
    if request.headers.get("hx-request") == "true":
        # htmx swaps the delivery's row in place.
        return render(
            request,
            "_delivery_row.html",
            current=current,
            delivery=webhooks.to_delivery_out(session, [delivery])[0],
        )
    return _see(f"/admin/jobs/{delivery.job_id}")


# ---- jobs --------------------------------------------------------------------------------


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    job_id: str, request: Request, current: CurrentDep, session: SessionDep
) -> HTMLResponse:
    page = views.job_page(session, job=job_service.find_job(session, job_id=job_id))
    return render(
        request, "job.html", current=current, active="/admin/jobs", title=job_id, page=page
    )


@router.get("/jobs/{job_id}/images/{role}/{position}")
def job_image(
    job_id: str,
    role: str,
    position: Annotated[int, Path(ge=0, le=99)],
    current: CurrentDep,
    session: SessionDep,
) -> Response:
    image = views.job_image(session, job_id=job_id, role=role, position=position)
    return Response(
        image.data,
        media_type=image.content_type,
        # Not kept by the browser: after logout nothing of a job stays on the machine.
        headers={"Cache-Control": "no-store"},
    )


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    current: CurrentDep,
    session: SessionDep,
    key: str | None = None,
    status: str | None = None,
    model: str | None = None,
    start: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
    id: str | None = None,
    q: str | None = None,
    cursor: str | None = None,
) -> HTMLResponse:
    filters = JobFilters.from_query(
        key_id=key, status=status, model=model, start=start, end=to, job_id=id, prompt=q
    )
    jobs, next_cursor = job_service.list_all_jobs(
        session, filters=filters, limit=JOBS_PER_PAGE, cursor=cursor or None
    )
    keys = key_service.list_keys(session)
    query = {
        "key": key,
        "status": status,
        "model": model,
        "from": start,
        "to": to,
        "id": id,
        "q": q,
    }

    def page_query(**changes: str | None) -> str:
        return urlencode({k: v for k, v in {**query, **changes}.items() if v})

    return render(
        request,
        "jobs.html",
        current=current,
        active="/admin/jobs",
        title="Jobs",
        jobs=jobs,
        next_cursor=next_cursor,
        cursor=cursor,
        query=query,
        page_query=page_query,
        keys=keys,
        key_names={k.id: k.name for k in keys},
        statuses=[s.value for s in JobStatus],
        models=list(catalog.MODELS),
        thumbnails=thumbnails.thumbnails_of(
            session, job_ids=[job.id for job in jobs if job.images_expired_at is None]
        ),
    )


# ---- usage and reconciliation ------------------------------------------------------------


@dataclass(frozen=True)
class UsageView:
    """A Usage page's query: the window, the grouping and the key, as the URL holds them."""

    span: usage.Window
    group_by: usage.GroupBy
    key_id: str | None
    query: dict[str, str]


def usage_view(
    start: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
    tz: str | None = None,
    group_by: usage.GroupBy = "day",
    key: str | None = None,
) -> UsageView:
    span = usage.window(start=start or None, end=to or None, tz=tz or None, now=utcnow())
    local_end = span.end.astimezone(span.tz)
    # The form shows whole local days: "to" is exclusive, so a window ending mid-day ends on
    # the next midnight.
    last = (
        local_end.date()
        if local_end.time() == datetime.min.time()
        else local_end.date() + timedelta(days=1)
    )
    query = {
        "from": span.start.astimezone(span.tz).date().isoformat(),
        "to": to or last.isoformat(),
        "tz": span.tz.key,
        "group_by": group_by,
        "key": key or "",
    }
    return UsageView(span=span, group_by=group_by, key_id=key or None, query=query)


UsageViewDep = Annotated[UsageView, Depends(usage_view)]


def _usage_rows(session: Session, view: UsageView, group_by: usage.GroupBy) -> list[usage.UsageRow]:
    return usage.usage(
        session,
        start=view.span.start,
        end=view.span.end,
        group_by=group_by,
        tz=view.span.tz,
        api_key_id=view.key_id,
    )


@router.get("/usage", response_class=HTMLResponse)
def usage_page(
    request: Request, current: CurrentDep, session: SessionDep, view: UsageViewDep
) -> HTMLResponse:
    rows = _usage_rows(session, view, view.group_by)
    keys = key_service.list_keys(session)
    return render(
        request,
        "usage.html",
        current=current,
        active="/admin/usage",
        title="Usage",
        rows=rows,
        total=usage.totals(rows),
        window=view.span,
        zone=view.span.tz,
        query=view.query,
        csv_query=urlencode({k: v for k, v in view.query.items() if v}),
        keys=keys,
        key_names={k.id: k.name for k in keys},
        common_zones=COMMON_ZONES,
    )


@router.get("/usage/reconciliation", response_class=HTMLResponse)
def usage_reconciliation(
    request: Request, current: CurrentDep, session: SessionDep, view: UsageViewDep
) -> HTMLResponse:
    """The Usage page's check, loaded after the page: the report summed by key and by model
    equals the ledger (usage.ledger_totals: its own hourly sums and ``charges``, never the
    rollup) to the nano-dollar."""
    by_key = usage.totals(_usage_rows(session, view, "key"))
    by_model = usage.totals(_usage_rows(session, view, "model"))
    ledger = usage.ledger_totals(
        session, start=view.span.start, end=view.span.end, api_key_id=view.key_id
    )
    return render(
        request,
        "_reconciliation_line.html",
        current=current,
        by_key=by_key,
        by_model=by_model,
        ledger=ledger,
        reconciled=ledger.agrees_with(by_key) and ledger.agrees_with(by_model),
    )


@router.get("/usage.csv")
def usage_csv(current: CurrentDep, session: SessionDep, view: UsageViewDep) -> Response:
    rows = _usage_rows(session, view, view.group_by)
    return CsvDownload(usage.csv_lines(rows, group_by=view.group_by), filename="fluxgate-usage.csv")


@router.get("/reconciliation", response_class=HTMLResponse)
def reconciliation_page(
    request: Request,
    current: CurrentDep,
    session: SessionDep,
    start: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
    day: str | None = None,
) -> HTMLResponse:
    today = utcnow().date()
    last_day = _day(to, "to") or today
    first_day = _day(start, "from") or max(last_day - timedelta(days=29), usage.EARLIEST.date())
    selected = _day(day, "day")
    keys = key_service.list_keys(session)
    return render(
        request,
        "reconciliation.html",
        current=current,
        active="/admin/reconciliation",
        title="Reconciliation",
        first_day=first_day,
        last_day=last_day,
        days=reconciliation.reconcile_days(session, first_day=first_day, last_day=last_day),
        selected_day=selected,
        mismatches=[]
        if selected is None
        else reconciliation.mismatches(
            session, day=selected, tolerance_nanos=reconciliation.ROUNDING_NANOS
        ),
        key_names={k.id: k.name for k in keys},
    )


def _day(value: str | None, param: str) -> date | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidParameter(f"{param} must be a date like 2026-11-01", param=param) from None
    if not usage.EARLIEST.date() <= day < usage.LATEST.date():
        raise InvalidParameter(f"{param} must be from 1970 to 8999", param=param)
    return day
