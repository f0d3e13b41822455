"""Templates and how values look on the pages (money, times, durations)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from app.core.money import format_usd
from app.dashboard.security import STATIC_PREFIX
from app.dashboard.sessions import Current

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"

NAV = (
    ("/admin", "Overview"),
    ("/admin/usage", "Usage"),
    ("/admin/keys", "Keys"),
    ("/admin/jobs", "Jobs"),
    ("/admin/webhooks", "Webhooks"),
    ("/admin/prices", "Prices"),
    ("/admin/reconciliation", "Reconciliation"),
)


def usd(nanos: int | None) -> str:
    if nanos is None:
        return "—"
    return f"-${format_usd(-nanos)}" if nanos < 0 else f"${format_usd(nanos)}"


def when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(ms: float | int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s"


def json_script(value: Any, element_id: str) -> Markup:
    """Data for a page's script, as ``<script type="application/json">`` (not executed, so the
    CSP allows it); ``<``, ``>`` and ``&`` are escaped so the data cannot close the element."""
    text = (
        json.dumps(value, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return Markup(  # noqa: S704  # escaped above; JSON inside a non-executed script element
        f'<script type="application/json" id="{element_id}">{text}</script>'
    )


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["usd"] = usd
templates.env.filters["when"] = when
templates.env.filters["duration"] = duration
templates.env.globals["static"] = lambda name: f"{STATIC_PREFIX}/{name}"
templates.env.globals["json_script"] = json_script


def render(
    request: Request,
    template: str,
    *,
    current: Current | None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page; with a session, the layout shows who is signed in and carries its CSRF token."""
    base = {
        "admin": None if current is None else current.api_key,
        "csrf_token": None if current is None else current.admin_session.csrf_token,
        "nav": NAV,
        "active": context.pop("active", None),
        "title": context.pop("title", "Fluxgate"),
    }
    return templates.TemplateResponse(
        request, template, {**base, **context}, status_code=status_code, headers=headers
    )
