"""What keeps the dashboard's pages safe in a browser: the response headers (a strict CSP with no
inline script or style), the session cookie's attributes, and the cross-site request checks."""

from __future__ import annotations

from typing import Literal, TypedDict
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.settings import Settings
from app.http.page_headers import BROWSER_PAGE_HEADERS

DASHBOARD_PREFIX = "/admin"
STATIC_PREFIX = f"{DASHBOARD_PREFIX}/static"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {"content-security-policy": CONTENT_SECURITY_POLICY, **BROWSER_PAGE_HEADERS}
_PAGE_HEADERS = tuple((name.encode(), value.encode()) for name, value in PAGE_HEADERS.items())

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


class DashboardHeaders:
    """Adds the page headers to every answer under ``/admin``: pages are never stored by a
    cache (they show money and keys), static files revalidate."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (
            path == DASHBOARD_PREFIX or path.startswith(f"{DASHBOARD_PREFIX}/")
        ):
            await self.app(scope, receive, send)
            return
        cache = b"no-cache" if path.startswith(f"{STATIC_PREFIX}/") else b"no-store"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                headers = list(message.get("headers", []))
                headers.extend(item for item in _PAGE_HEADERS if item[0] not in names)
                if b"cache-control" not in names:
                    headers.append((b"cache-control", cache))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def is_secure(request: Request, settings: Settings) -> bool:
    """Served over https (as the client sees it), so cookies must be ``Secure``."""
    if settings.public_url is not None:
        return settings.public_url.startswith("https://")
    return request.url.scheme == "https"


def cookie_name(secure: bool) -> str:
    # __Host- binds the cookie to this exact origin (no Domain, Path=/, Secure): a sibling
    # subdomain cannot plant or overwrite it. Browsers accept the prefix only over https.
    return "__Host-fluxgate_admin" if secure else "fluxgate_admin"


def cookie_path(secure: bool) -> str:
    # The __Host- prefix requires Path=/; over plain http the cookie is kept to /admin.
    return "/" if secure else DASHBOARD_PREFIX


class CookieOptions(TypedDict):
    key: str
    path: str
    secure: bool
    httponly: bool
    samesite: Literal["strict"]


def cookie_options(secure: bool) -> CookieOptions:
    """The session cookie's name and attributes, the same when it is set and when deleted."""
    return {
        "key": cookie_name(secure),
        "path": cookie_path(secure),
        "secure": secure,
        "httponly": True,
        "samesite": "strict",
    }


def own_origin(request: Request, settings: Settings) -> str:
    if settings.public_url is not None:
        parts = urlsplit(settings.public_url)
        return f"{parts.scheme}://{parts.netloc}".lower()
    return f"{request.url.scheme}://{request.url.netloc}".lower()


def same_origin(request: Request, settings: Settings) -> bool:
    """Whether a state-changing request comes from our own pages. Browsers send ``Origin`` on
    every POST and ``Sec-Fetch-Site`` on every request; one of them must vouch for us, and
    neither may say otherwise. A request with neither is refused: no browser sends that."""
    origin = request.headers.get("origin")
    fetch_site = request.headers.get("sec-fetch-site")
    if origin is not None and origin.lower() != own_origin(request, settings):
        return False
    if fetch_site is not None and fetch_site != "same-origin":
        return False
    return origin is not None or fetch_site is not None


def safe_next(value: str | None) -> str:
    """Where to go after login: a dashboard path only (no open redirect)."""
    if (
        value is None
        or not (
            value == DASHBOARD_PREFIX
            or value.startswith((f"{DASHBOARD_PREFIX}/", f"{DASHBOARD_PREFIX}?"))
        )
        or "\\" in value
        or any(ord(char) < 0x20 for char in value)
    ):
        return DASHBOARD_PREFIX
    return value
