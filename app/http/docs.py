"""The API's pages for people: ``/docs`` (Swagger UI), ``/redoc`` (ReDoc) and ``/``.

Their scripts and styles are served from the package (``docs_static/``: pinned npm releases,
unchanged, their licences and SHA-256 in its ``manifest.json``), so the docs work without
internet. Each page carries a Content-Security-Policy as strict as its script allows.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from app.http.page_headers import BROWSER_PAGE_HEADERS

DOCS_STATIC_PREFIX = "/docs/static"
STATIC_DIR = Path(__file__).parent / "docs_static"
# The vendored files, by the names the pages use (versions in them: a new release is a new URL).
SWAGGER_JS = "swagger-ui-5.35.0-bundle.js"
SWAGGER_CSS = "swagger-ui-5.35.0.css"
FAVICON = "swagger-ui-5.35.0-favicon-32x32.png"
REDOC_JS = "redoc-2.5.4.standalone.js"

# What every page of ours may do, whichever page it is.
_COMMON = "frame-ancestors 'none'; base-uri 'none'"
PAGE_HEADERS = {**BROWSER_PAGE_HEADERS, "cache-control": "no-cache"}


def _static(name: str) -> str:
    return f"{DOCS_STATIC_PREFIX}/{name}"


def _inline_script_hashes(page: str) -> str:
    """CSP sources for the page's inline scripts (Swagger UI's start-up call), by their hash:
    only these exact scripts run, nothing injected."""
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    )


def swagger_page(*, title: str, openapi_url: str) -> tuple[bytes, str]:
    """The /docs page and its CSP."""
    rendered = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=_static(SWAGGER_JS),
        swagger_css_url=_static(SWAGGER_CSS),
        swagger_favicon_url=_static(FAVICON),
        oauth2_redirect_url=None,
        # Swagger UI would send the description to validator.swagger.io for a badge.
        swagger_ui_parameters={"validatorUrl": None},
    )
    page = bytes(rendered.body).decode()
    policy = (
        f"default-src 'none'; script-src 'self' {_inline_script_hashes(page)}; "
        # "Try it out" calls the API and shows images it answers (as blob: URLs).
        "style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
        f"form-action 'none'; {_COMMON}"
    )
    return page.encode(), policy


def redoc_page(*, title: str, openapi_url: str) -> tuple[bytes, str]:
    """The /redoc page and its CSP. ReDoc renders with styled-components, which inserts
    <style> elements as it goes: styles must be allowed inline (scripts are not); its search
    index runs in a worker made from a blob: URL."""
    rendered = get_redoc_html(
        openapi_url=openapi_url,
        title=title,
        redoc_js_url=_static(REDOC_JS),
        redoc_favicon_url=_static(FAVICON),
        with_google_fonts=False,
    )
    page = bytes(rendered.body).decode()
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; worker-src blob:; "
        f"form-action 'none'; {_COMMON}"
    )
    return page.encode(), policy


# Where a person or a program starting at / goes next.
LINKS = {
    "docs": ("/docs", "the API, with examples (Swagger UI)"),
    "redoc": ("/redoc", "the same, as one page to read (ReDoc)"),
    "openapi": ("/openapi.json", "the OpenAPI description"),
    "admin": ("/admin", "the admin dashboard (sign in with an admin key)"),
    "models": ("/v1/models", "models, limits and prices (with an API key)"),
    "health": ("/healthz", "the process is up"),
    "ready": ("/readyz", "the database and the broker answer"),
}


def index_page(*, title: str, description: str) -> bytes:
    items = "\n".join(
        f'<li><a href="{path}">{path}</a>: {html.escape(what)}</li>'
        for path, what in LINKS.values()
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f'<link rel="icon" href="{_static(FAVICON)}">\n</head>\n<body>\n'
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(description)}</p>\n"
        f"<ul>\n{items}\n</ul>\n</body>\n</html>\n"
    ).encode()


INDEX_POLICY = f"default-src 'none'; img-src 'self'; form-action 'none'; {_COMMON}"


def _quality(accept: str, wanted: str) -> float:
    """How much ``accept`` (an Accept header) wants ``wanted`` (e.g. "text/html"): the q of
    the most specific range that covers it, 0 if none does."""
    kind = wanted.split("/")[0]
    best, specificity = 0.0, -1
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        rank = {wanted: 2, f"{kind}/*": 1, "*/*": 0}.get(media.lower(), -1)
        if rank <= specificity:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best, specificity = q, rank
    return best


def wants_html(request: Request) -> bool:
    """A browser asks for text/html above JSON; curl's and the API clients' */* gets JSON."""
    accept = request.headers.get("accept", "")
    return _quality(accept, "text/html") > _quality(accept, "application/json")


def install(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc``, their files and ``/`` to ``app`` (made with
    ``docs_url=None, redoc_url=None``: FastAPI's own pages load their files from a CDN)."""
    openapi_url = app.openapi_url or "/openapi.json"
    swagger, swagger_policy = swagger_page(title=f"{app.title} API", openapi_url=openapi_url)
    redoc, redoc_policy = redoc_page(title=f"{app.title} API", openapi_url=openapi_url)
    index = index_page(title=app.title, description=app.description)
    index_json = {
        "name": app.title,
        "version": app.version,
        "links": {name: path for name, (path, _) in LINKS.items()},
    }
    router = APIRouter(include_in_schema=False)

    def page(body: bytes, policy: str) -> Response:
        headers = {**PAGE_HEADERS, "content-security-policy": policy}
        return HTMLResponse(body, headers=headers)

    @router.get("/docs")
    def swagger_ui() -> Response:
        return page(swagger, swagger_policy)

    @router.get("/redoc")
    def redoc_ui() -> Response:
        return page(redoc, redoc_policy)

    @router.get("/")
    def index_of(request: Request) -> Response:
        response = page(index, INDEX_POLICY) if wants_html(request) else JSONResponse(index_json)
        response.headers["vary"] = "Accept"
        return response

    app.include_router(router)
    app.mount(DOCS_STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="docs-static")
