"""How the dashboard answers when there is no page to show: an error as a page (the same
errors the API answers in its envelope), and the way to the login form."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.dashboard.rendering import render
from app.dashboard.security import DASHBOARD_PREFIX, PAGE_HEADERS


def is_dashboard(path: str) -> bool:
    return path == DASHBOARD_PREFIX or path.startswith(f"{DASHBOARD_PREFIX}/")


def error_page(
    request: Request, status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> Response:
    try:
        heading = HTTPStatus(status).phrase
    except ValueError:
        heading = "Error"
    return render(
        request,
        "error.html",
        current=None,
        status_code=status,
        # Set here too: a 500 is answered outside the middleware that adds them to pages.
        headers={**PAGE_HEADERS, "cache-control": "no-store", **(headers or {})},
        title=heading,
        status=status,
        heading=heading,
        message=message,
    )


def to_login(request: Request, next_path: str) -> Response:
    target = f"{DASHBOARD_PREFIX}/login?next={quote(next_path, safe='')}"
    if request.headers.get("hx-request") == "true":
        # htmx would swap the login page into a panel: have it load the page instead.
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)
