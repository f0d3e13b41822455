"""The API docs work offline: /docs (Swagger UI) and /redoc (ReDoc) render in a real browser
(Debian's Chromium) kept on 127.0.0.1, from files vendored unchanged from pinned npm releases
with their licences, under a CSP the browser enforces; and / says where to go."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser

from app.http import docs
from tests.harness.browser import Session, browser_session, chromium
from tests.harness.stack import Stack, running_gateway

VENDOR = docs.STATIC_DIR


def test_vendored_files_match_their_recorded_sha256_and_carry_their_licences() -> None:
    manifest = json.loads((VENDOR / "manifest.json").read_text())
    recorded = set()
    for package in manifest["packages"]:
        assert re.fullmatch(r"\d+\.\d+\.\d+", package["version"]), package  # pinned
        assert package["tarball"].startswith("https://registry.npmjs.org/")
        assert package["tarball_integrity"].startswith("sha512-")
        assert package["licence_files"], package
        for name, meta in package["licence_files"].items():
            assert (VENDOR / name).read_text().strip(), name
            assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == meta["sha256"]
            recorded.add(name)
        for name, meta in package["files"].items():
            assert package["version"] in name  # the version is in the URL the pages use
            assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == meta["sha256"]
            recorded.add(name)
    on_disk = {path.name for path in VENDOR.iterdir()} - {"manifest.json"}
    assert on_disk == recorded  # nothing vendored without a record
    # Apache-2.0 asks for the NOTICE to travel with the files.
    assert "swagger-ui-NOTICE.txt" in recorded


def test_pages_use_only_vendored_files() -> None:
    swagger, _ = docs.swagger_page(title="t", openapi_url="/openapi.json")
    redoc, _ = docs.redoc_page(title="t", openapi_url="/openapi.json")
    index = docs.index_page(title="t", description="d")
    for page in (swagger, redoc, index):
        text = page.decode()
        assert not re.search(r"(https?:)?//", text), text  # no CDN, no fonts from elsewhere
        used = re.findall(r'(?:src|href)="/docs/static/([^"]+)"', text)
        assert used
        for name in used:
            assert (VENDOR / name).is_file(), name


def test_the_csp_allows_exactly_the_inline_script_swagger_ui_starts_with() -> None:
    page, policy = docs.swagger_page(title="t", openapi_url="/openapi.json")
    [inline] = re.findall(r"<script>(.*?)</script>", page.decode(), flags=re.DOTALL)
    assert "SwaggerUIBundle(" in inline
    assert policy.count("'sha256-") == 1
    assert "'unsafe-inline'" not in policy
    assert "'unsafe-eval'" not in policy


@pytest.fixture(scope="module")
def stack(log_dir: Path) -> Iterator[Stack]:
    # Pages and files only: what they show does not depend on the backend.
    with running_gateway(
        log_dir, backend="embedded", latency=0.05, worker=False, beat=False
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def web(browser: Browser, stack: Stack) -> Iterator[Session]:
    with browser_session(browser, stack.api_url) as session:
        yield session
        # Nothing tried to leave 127.0.0.1, no CSP refusal, no missing file.
        assert session.problems() == []


def test_swagger_ui_renders_the_operations_and_tries_one(web: Session) -> None:
    response = web.page.goto(f"{web.base_url}/docs")
    assert response is not None
    assert response.status == 200
    assert "script-src 'self' 'sha256-" in response.headers["content-security-policy"]
    page = web.page
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/v1/jobs" in {path.replace("\u200b", "") for path in paths}
    assert page.locator(".info .title").inner_text().startswith("Fluxgate")
    # "Try it out" calls the API from the page (connect-src 'self').
    health = page.locator("#operations-operations-healthz_healthz_get")
    health.locator(".opblock-summary").click()
    health.locator(".try-out__btn").click()
    health.locator(".execute").click()
    status = health.locator(".live-responses-table td.response-col_status:not(.col_header)")
    status.wait_for(timeout=15_000)
    assert status.inner_text().strip() == "200"


# ReDoc 2.x always draws Redocly's logo from its CDN under the side menu. The CSP refuses it
# before any request is made (the image then hides itself): the one refusal expected.
REDOC_LOGO_REFUSED = "Loading the image 'https://cdn.redoc.ly/redoc/logo-mini.svg' violates"


def test_redoc_renders_the_description(browser: Browser, stack: Stack) -> None:
    with browser_session(browser, stack.api_url) as web:
        response = web.page.goto(f"{web.base_url}/redoc")
        assert response is not None
        assert response.status == 200
        assert "script-src 'self';" in response.headers["content-security-policy"]
        page = web.page
        page.wait_for_selector("h1", timeout=30_000)
        assert page.locator("h1").first.inner_text().startswith("Fluxgate")
        page.locator("h2", has_text="Submit a generation job").first.wait_for(timeout=15_000)
        # The search runs in ReDoc's worker (a blob: URL, allowed as worker-src only).
        page.fill('input[placeholder="Search..."]', "cancel")
        page.locator("[role=search] li").first.wait_for(timeout=15_000)
        assert web.blocked == []  # no request left 127.0.0.1
        refused = [line for line in web.problems() if REDOC_LOGO_REFUSED in line]
        assert refused  # the logo was refused by the CSP, not fetched
        assert [line for line in web.problems() if line not in refused] == []


def test_the_root_page_leads_a_browser_to_the_docs(web: Session) -> None:
    response = web.page.goto(f"{web.base_url}/")
    assert response is not None
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    links = web.page.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert {"/docs", "/redoc", "/openapi.json", "/admin", "/v1/models"} <= set(links)
    web.page.click('a[href="/docs"]')
    web.page.wait_for_selector(".opblock-summary-path", timeout=30_000)


def test_the_root_answers_programs_with_json(stack: Stack) -> None:
    answer = httpx.get(f"{stack.api_url}/")  # Accept: */*, as curl sends
    assert answer.status_code == 200
    assert answer.headers["vary"] == "Accept"
    body = answer.json()
    assert body["name"] == "Fluxgate"
    assert body["links"]["docs"] == "/docs"
    assert body["links"]["models"] == "/v1/models"
    assert body["links"]["admin"] == "/admin"
    # Every link it gives is there (the API key's ones answer 401 without one).
    for path in body["links"].values():
        assert httpx.get(f"{stack.api_url}{path}").status_code in (200, 303, 401), path
    html = httpx.get(f"{stack.api_url}/", headers={"Accept": "text/html"})
    assert html.headers["content-type"].startswith("text/html")
    preferred_json = httpx.get(
        f"{stack.api_url}/", headers={"Accept": "text/html;q=0.5, application/json"}
    )
    assert preferred_json.headers["content-type"] == "application/json"
