"""The admin dashboard in a real browser (Debian's Chromium through Playwright) against the real
stack, on PostgreSQL + Redis and on the embedded default. Every test's browser is kept on
127.0.0.1 and must see no CSP violation and no missing file (``web`` checks at teardown)."""

from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page

from app.dashboard.rendering import duration
from tests.harness.browser import Session, browser_session, chromium
from tests.harness.images import b64, picture
from tests.harness.processes import free_port, wait_until
from tests.harness.stack import Stack, running_gateway
from tests.helpers import FINAL, wait_for_job
from tests.receiver import Receiver

COOKIE = "fluxgate_admin"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGES = [
    "/admin",
    "/admin?days=90&stack=key",
    "/admin/usage",
    "/admin/usage?group_by=hour&tz=Asia/Kolkata",
    "/admin/usage/reconciliation",
    "/admin/keys",
    "/admin/jobs",
    "/admin/webhooks",
    "/admin/prices",
    "/admin/reconciliation",
]


@dataclass
class Board:
    stack: Stack
    admin: str
    receiver: Receiver

    def api(self, key: str | None = None) -> httpx.Client:
        return self.stack.client(key or self.admin)

    def at(self, moment: datetime) -> object:
        """A time as this backend's raw SQL takes it (SQLite keeps naive UTC)."""
        return moment.replace(tzinfo=None) if self.stack.backend == "embedded" else moment


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def board(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Board]:
    receiver = Receiver("127.0.0.1")
    try:
        with running_gateway(
            log_dir,
            backend=request.param,
            latency=0.05,
            worker=True,
            webhook_allowed_networks="127.0.0.1/32",
            # The first attempt at once, the next in ten minutes: a failing delivery stays
            # failing until someone redelivers it.
            webhook_retry_schedule="0,600",
            # One login window for the whole run: the throttle test cannot straddle two.
            admin_login_window_seconds="1000000000",
        ) as stack:
            yield Board(stack, stack.create_key("dashboard admin", "--admin"), receiver)
    finally:
        receiver.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def web(browser: Browser, board: Board) -> Iterator[Session]:
    with browser_session(browser, board.stack.api_url) as session:
        yield session
        assert session.problems() == []


@pytest.fixture
def signed_in(web: Session, board: Board) -> Session:
    page = web.log_in(board.admin)
    assert page.url == f"{board.stack.api_url}/admin"
    return web


def csrf_token(page: Page) -> str:
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    assert token
    return token


def run_job(client: httpx.Client, **body: Any) -> dict[str, Any]:
    job = client.post("/v1/jobs", json={"prompt": f"dash {uuid.uuid4().hex[:8]}", **body})
    assert job.status_code == 202, job.text
    done = wait_for_job(client, job.json()["id"], statuses=FINAL)
    assert done["status"] == "succeeded", done
    return done


# ---- login, sessions, expiry -------------------------------------------------------------


def test_login_sets_a_session_cookie_and_never_the_key(web: Session, board: Board) -> None:
    page = web.go("/admin/keys")
    assert page.url == f"{board.stack.api_url}/admin/login?next=%2Fadmin%2Fkeys"
    page = web.log_in(board.admin, here=True)
    # Back where the admin was going.
    assert page.url == f"{board.stack.api_url}/admin/keys"
    assert page.locator("h1").inner_text() == "Keys"
    cookie = web.cookie(COOKIE)
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin"
    assert cookie["secure"] is False  # plain http here; see test_cookie_over_https
    # The key itself is nowhere in the browser: not in a cookie, not in the page.
    assert all(board.admin not in str(c["value"]) for c in web.context.cookies())
    assert board.admin not in page.content()
    # Not readable by a script either.
    assert COOKIE not in page.evaluate("document.cookie")


def test_logout_deletes_the_session(signed_in: Session, board: Board) -> None:
    sessions_before = board.stack.sql("SELECT count(*) FROM admin_sessions")[0][0]
    page = signed_in.page
    page.click("form.logout button")
    page.wait_for_url(re.compile(r".*/admin/login$"))
    assert signed_in.cookie(COOKIE) is None
    assert board.stack.sql("SELECT count(*) FROM admin_sessions")[0][0] == sessions_before - 1
    signed_in.go("/admin")
    assert "/admin/login" in page.url


def test_over_https_the_cookie_is_secure_and_bound_to_the_host(board: Board) -> None:
    public = "https://gateway.example"
    api, url = board.stack.start_extra_api(public_url=public)
    try:
        with httpx.Client(base_url=url, headers={"Origin": public}) as client:
            answer = client.post("/admin/login", data={"key": board.admin})
    finally:
        api.stop()
    assert answer.status_code == 303
    attributes = [part.strip().lower() for part in answer.headers["set-cookie"].split(";")]
    assert attributes[0].startswith("__host-fluxgate_admin=")
    # __Host- requires Secure and Path=/ (and no Domain), or the browser drops the cookie.
    assert {"secure", "httponly", "path=/", "samesite=strict"} <= set(attributes)
    assert not any(part.startswith("domain=") for part in attributes)


def test_a_wrong_key_or_a_normal_key_cannot_log_in(web: Session, board: Board) -> None:
    normal = board.stack.create_key("not an admin")
    try:
        for presented in ("fgk_not-a-key", normal, "nonsense"):
            page = web.go("/admin/login")
            page.fill("#key", presented)
            with page.expect_response(
                lambda r: r.url.endswith("/admin/login") and r.request.method == "POST"
            ) as answer:
                page.click("button[type=submit]")
            assert answer.value.status == 401
            assert page.locator("[role=alert]").inner_text() == "That is not a live admin key."
            assert web.cookie(COOKIE) is None
    finally:
        board.stack.execute("DELETE FROM admin_login_failures")


def test_failed_logins_are_throttled_per_address(board: Board) -> None:
    url = board.stack.api_url
    origin = {"Origin": url}
    try:
        with httpx.Client(base_url=url, headers=origin) as client:
            assert client.post("/admin/login", data={"key": board.admin}).status_code == 303

            def guess(_: int) -> int:
                return client.post("/admin/login", data={"key": "fgk_wrong"}).status_code

            # Sent at once, the guesses take turns: exactly the allowed number is checked
            # (FLUXGATE_ADMIN_LOGIN_MAX_FAILURES' default, 10), a working login is no failure.
            with ThreadPoolExecutor(max_workers=8) as pool:
                answers = sorted(pool.map(guess, range(16)))
            assert answers == [401] * 10 + [429] * 6
            refused = client.post("/admin/login", data={"key": board.admin})
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) > 0
            assert "too many failed logins" in refused.text
    finally:
        board.stack.execute("DELETE FROM admin_login_failures")
    with httpx.Client(base_url=url, headers=origin) as client:
        assert client.post("/admin/login", data={"key": board.admin}).status_code == 303


def test_login_sends_the_admin_only_to_a_dashboard_page(board: Board) -> None:
    url = board.stack.api_url
    with httpx.Client(base_url=url, headers={"Origin": url}) as client:
        for target, expected in [
            ("/admin/jobs?status=failed", "/admin/jobs?status=failed"),
            ("//evil.example/admin", "/admin"),
            ("https://evil.example/admin", "/admin"),
            ("/administrator", "/admin"),
            ("/admin\\evil", "/admin"),
        ]:
            answer = client.post("/admin/login", data={"key": board.admin, "next": target})
            assert answer.status_code == 303
            assert answer.headers["location"] == expected, target


def test_idle_and_absolute_expiry_end_a_session(signed_in: Session, board: Board) -> None:
    now = datetime.now(UTC)
    board.stack.execute(
        "UPDATE admin_sessions SET last_seen_at = :t", t=board.at(now - timedelta(minutes=31))
    )
    page = signed_in.go("/admin/keys")
    assert "/admin/login" in page.url  # 30 minutes without a request

    signed_in.log_in(board.admin)
    board.stack.execute(
        "UPDATE admin_sessions SET expires_at = :t", t=board.at(now - timedelta(seconds=1))
    )
    page = signed_in.go("/admin/keys")
    assert "/admin/login" in page.url  # 12 hours after login, however active


def test_a_revoked_admin_key_ends_its_sessions(web: Session, board: Board) -> None:
    second = board.stack.create_key("second admin", "--admin")
    page = web.log_in(second)
    assert page.locator("h1").inner_text() == "Overview"
    with board.api() as api:
        key_id = next(
            k["id"]
            for k in api.get("/v1/admin/keys").json()["data"]
            if second.startswith(k["prefix"])
        )
        assert api.delete(f"/v1/admin/keys/{key_id}").status_code == 200
    page = web.go("/admin")
    assert "/admin/login" in page.url


# ---- cross-site requests -----------------------------------------------------------------


def test_forms_without_the_token_or_from_another_origin_are_refused(
    signed_in: Session, board: Board
) -> None:
    page = signed_in.go("/admin/keys")
    token = csrf_token(page)
    url = board.stack.api_url
    request = signed_in.context.request

    def post(form: dict[str, str], headers: dict[str, str]) -> int:
        return request.post(f"{url}/admin/keys", form=form, headers=headers, max_redirects=0).status

    name = f"csrf {uuid.uuid4().hex[:6]}"
    assert post({"name": name}, {"Origin": url}) == 403  # no token
    assert post({"name": name, "csrf_token": "forged"}, {"Origin": url}) == 403
    assert post({"name": name, "csrf_token": token}, {"Origin": "http://evil.example"}) == 403
    assert post({"name": name, "csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}) == 403
    assert post({"name": name, "csrf_token": token}, {}) == 403  # neither header: no browser
    with board.api() as api:
        names = [k["name"] for k in api.get("/v1/admin/keys").json()["data"]]
    assert name not in names
    # htmx sends the token as a header: a wrong header is refused even beside a right field.
    wrong = {"Origin": url, "X-CSRF-Token": "forged"}
    assert post({"name": name, "csrf_token": token}, wrong) == 403
    with board.api() as api:
        names = [k["name"] for k in api.get("/v1/admin/keys").json()["data"]]
    assert name not in names
    # The same form from the dashboard's own origin, with its token, goes through; so does the
    # token in the header alone.
    assert post({"name": name, "csrf_token": token}, {"Origin": url}) == 201
    assert post({"name": f"{name} 2"}, {"Origin": url, "X-CSRF-Token": token}) == 201


def test_a_form_on_another_origin_cannot_post_to_the_dashboard(
    signed_in: Session, board: Board
) -> None:
    """A real cross-origin page (same host, another port: same-site, so even a SameSite=Strict
    cookie goes along) posting the dashboard's key form: refused by the Origin check."""
    name = f"attacker {uuid.uuid4().hex[:6]}"
    html = (
        f'<form method="post" action="{board.stack.api_url}/admin/keys">'
        f'<input name="name" value="{name}"><button id="go">go</button></form>'
    ).encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = signed_in.page
        page.goto(f"http://127.0.0.1:{server.server_port}/")
        with page.expect_response(lambda r: r.url.endswith("/admin/keys")) as answer:
            page.click("#go")
        assert answer.value.status == 403
    finally:
        server.shutdown()
        server.server_close()
    with board.api() as api:
        assert name not in [k["name"] for k in api.get("/v1/admin/keys").json()["data"]]


def test_bad_input_is_a_4xx_page_never_a_500(signed_in: Session, board: Board) -> None:
    cookie = signed_in.cookie(COOKIE)
    assert cookie is not None
    bad = [
        "/admin?days=8",
        "/admin?days=x&stack=y",
        "/admin/usage?tz=Mars/Base",
        "/admin/usage?group_by=week",
        "/admin/usage?from=2026-13-01",
        "/admin/usage?to=9999-12-31T12:00:00Z",
        "/admin/usage?from=0001-01-01T00:00:00Z&tz=America/New_York",
        "/admin/usage.csv?tz=Asia/Tokyo&to=9999-12-31T23:30:00%2B00:00",
        "/admin/usage?from=2026-11-02&to=2026-11-01",
        "/admin/jobs?status=done",
        "/admin/jobs?cursor=job_nope",
        "/admin/jobs?q=ab",
        "/admin/jobs?from=yesterday",
        "/admin/jobs?q=%00",
        "/admin/jobs/job_nope",
        "/admin/jobs/x/images/output/99999999999999999999",
        "/admin/jobs/x/images/output/-1",
        "/admin/keys/key_nope",
        "/admin/webhooks?status=lost",
        "/admin/reconciliation?to=0001-01-05",
        "/admin/reconciliation?from=9999-12-01&to=9999-12-31",
        "/admin/reconciliation?day=9999-12-31",
        "/admin/reconciliation?from=2026-11-10&to=2026-11-01",
        "/admin/nothing-here",
    ]
    with httpx.Client(
        base_url=board.stack.api_url, cookies={COOKIE: str(cookie["value"])}
    ) as client:
        for path in bad:
            answer = client.get(path)
            assert 400 <= answer.status_code < 500, (path, answer.status_code)
            assert answer.headers["content-type"].startswith("text/html"), path
            assert answer.headers["content-security-policy"] == CSP, path
            assert 'role="alert"' in answer.text, path
        posted = client.post(
            "/admin/keys/key_nope", data={"name": "x"}, headers={"Origin": board.stack.api_url}
        )
        assert posted.status_code == 403  # no token: refused before anything is looked up


def test_a_form_posted_after_the_session_ended_leads_back_to_a_page(board: Board) -> None:
    with httpx.Client(base_url=board.stack.api_url, headers={"Origin": board.stack.api_url}) as c:
        answer = c.post("/admin/keys/key_x/revoke", data={"csrf_token": "t"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/admin/login?next=%2Fadmin"


def test_pages_carry_the_security_headers_and_no_inline_code(
    signed_in: Session, board: Board
) -> None:
    cookie = signed_in.cookie(COOKIE)
    assert cookie is not None
    with httpx.Client(
        base_url=board.stack.api_url, cookies={COOKIE: str(cookie["value"])}
    ) as client:
        for path in ["/admin/login", *PAGES]:
            answer = client.get(path)
            assert answer.status_code == 200, path
            headers = answer.headers
            assert headers["content-security-policy"] == CSP
            assert headers["x-frame-options"] == "DENY"
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "same-origin"
            assert headers["cache-control"] == "no-store"
            html = answer.text
            assert " style=" not in html, path
            assert "<style" not in html, path
            for script in re.findall(r"<script[^>]*>", html):
                assert 'src="/admin/static/' in script or 'type="application/json"' in script
            assert not re.search(r"\son[a-z]+=", html), path  # no inline event handlers


# ---- keys --------------------------------------------------------------------------------


def test_a_key_created_on_the_page_is_shown_once_works_and_can_be_revoked(
    signed_in: Session, board: Board
) -> None:
    page = signed_in.go("/admin/keys")
    name = f"made in the browser {uuid.uuid4().hex[:6]}"
    page.fill("input[name=name]", name)
    page.fill("input[name=rate_limit_per_minute]", "120")
    page.click("form[action='/admin/keys'] button[type=submit]")
    key = page.locator("[data-secret=key]").inner_text().strip()
    secret = page.locator("[data-secret=webhook]").inner_text().strip()
    assert key.startswith("fgk_")
    assert secret.startswith("whsec_")

    with board.api(key) as client:
        assert client.get("/v1/models").status_code == 200
    with board.api() as api:
        [made] = [k for k in api.get("/v1/admin/keys").json()["data"] if k["name"] == name]
    assert made["rate_limit_per_minute"] == 120
    assert key.startswith(made["prefix"])

    # Shown once: the list page never shows it again.
    page = signed_in.go("/admin/keys")
    assert key not in page.content()
    assert secret not in page.content()

    page = signed_in.go(f"/admin/keys/{made['id']}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form[action$='/revoke'] button")
    page.wait_for_load_state()
    assert "revoked" in page.locator(".facts").inner_text()
    with board.api(key) as client:
        refused = client.get("/v1/models")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


def test_budget_and_limits_are_edited_through_the_api_schema(
    signed_in: Session, board: Board
) -> None:
    with board.api() as api:
        made = api.post("/v1/admin/keys", json={"name": f"edit {uuid.uuid4().hex[:6]}"}).json()
    page = signed_in.go(f"/admin/keys/{made['id']}")
    page.fill("input[name=budget_usd]", "12.5")
    page.fill("input[name=max_concurrent_jobs]", "3")
    page.click("form[action='/admin/keys/" + made["id"] + "'] button[type=submit]")
    page.wait_for_load_state()
    with board.api() as api:
        shown = api.get(f"/v1/admin/keys/{made['id']}").json()
    assert shown["budget_usd"] == "12.5"
    assert shown["max_concurrent_jobs"] == 3
    # Refused as the API refuses it, shown on the page.
    page.fill("input[name=budget_usd]", "-1")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("form[action='/admin/keys/" + made["id"] + "'] button[type=submit]")
    assert answer.value.status == 422
    assert "budget_usd" in page.locator("[role=alert]").inner_text()


# ---- jobs, money, deliveries -------------------------------------------------------------


def test_a_job_page_explains_its_charge(signed_in: Session, board: Board) -> None:
    key = board.stack.create_key("explained")
    with board.api(key) as client:
        job = run_job(client, width=1024, height=768)
    [(charged,)] = board.stack.sql(
        "SELECT amount_nanos FROM charges WHERE job_id = :id", id=job["id"]
    )
    page = signed_in.go(f"/admin/jobs/{job['id']}")
    explained = page.locator("[data-explain]")
    assert explained.locator("[data-total]").inner_text() == f"${job['cost']['charged']}"
    assert explained.locator("[data-charged]").inner_text() == f"${job['cost']['charged']}"
    assert Decimal(job["cost"]["charged"]) * 10**9 == charged
    # Lines: units x unit price, summing to the charge (klein: tiles, no per-step pricing).
    lines = explained.locator("tbody tr").all()
    total = Decimal(0)
    for line in lines:
        cells = [cell.inner_text() for cell in line.locator("td").all()]
        units, unit_price, amount = int(cells[1]), Decimal(cells[2][1:]), Decimal(cells[3][1:])
        assert units * unit_price == amount
        total += amount
    assert total * 10**9 == charged
    assert page.locator("[data-neurons]").count() == 1  # the simulator reports neurons
    # The timeline shows the attempt; the output image loads.
    assert "attempt 1 ended" in page.locator(".timeline").inner_text()
    image = page.locator("img[alt='output image']")
    assert image.evaluate("img => img.complete && img.naturalWidth") == 1024


def test_a_job_page_shows_where_each_attempts_time_went(signed_in: Session, board: Board) -> None:
    key = board.stack.create_key("timed")
    prompt = f"dash retried {uuid.uuid4().hex[:8]}"
    board.stack.simulator.script(prompt, ["3040", "ok"])
    with board.api(key) as client:
        job = run_job(client, prompt=prompt)
    assert job["attempts"] == 2
    page = signed_in.go(f"/admin/jobs/{job['id']}")
    # Each attempt's end shows its own gateway time; the totals are the Job's.
    overheads = [
        cell.inner_text() for cell in page.locator("[data-overhead]").all() if cell.inner_text()
    ]
    assert len(overheads) == 2
    assert all(text.endswith("ms") or text.endswith("s") for text in overheads)
    timings = job["timings"]
    summary = page.locator("[data-timings]").inner_text()
    assert f"Workers AI {duration(timings['upstream_ms'])}" in summary
    assert f"Queued {duration(timings['queue_ms'])}" in summary
    assert f"the gateway {duration(timings['overhead_ms'])}" in summary


def test_an_edit_job_page_shows_its_inputs_and_prices_them(
    signed_in: Session, board: Board
) -> None:
    with board.api(board.stack.create_key("editor")) as client:
        job = run_job(
            client,
            model="flux-2-klein-9b",
            input_images=[b64(picture(300, 400)), b64(picture(1800, 900, fmt="JPEG"))],
        )
    page = signed_in.go(f"/admin/jobs/{job['id']}")
    lines = {
        row.locator("td").first.inner_text(): [c.inner_text() for c in row.locator("td").all()]
        for row in page.locator("[data-explain] tbody tr").all()
    }
    # klein-9b bills input by the megapixel: the stored (downscaled) inputs, one each.
    assert lines["input megapixels"][1] == "2"
    assert _money(page.locator("[data-total]").inner_text()) == _money(f"${job['cost']['charged']}")
    for position in (0, 1):
        image = page.locator(f"img[alt='input image {position + 1}']")
        assert image.evaluate("img => img.complete && img.naturalWidth > 0")


def test_a_failing_delivery_is_redelivered_from_the_page(signed_in: Session, board: Board) -> None:
    slug = uuid.uuid4().hex[:8]
    board.receiver.scripts[slug] = [500]  # then 200
    path = f"/script/{slug}"
    key = board.stack.create_key("hooked")
    with board.api(key) as client:
        job = client.post(
            "/v1/jobs",
            json={"prompt": "hook", "webhook_url": board.receiver.url(path)},
        ).json()
    board.receiver.wait_for(path)
    with board.api() as api:
        wait_until(
            lambda: any(
                d["job_id"] == job["id"]
                for d in api.get(
                    "/v1/admin/webhook-deliveries", params={"status": "failing"}
                ).json()["data"]
            ),
            timeout=20,
            what="the delivery to be failing",
        )
    page = signed_in.go("/admin/webhooks?status=failing")
    row = page.locator(f"tbody:has(a[href='/admin/jobs/{job['id']}'])")
    assert row.locator("[data-delivery-status]").inner_text() == "pending"
    with page.expect_response(lambda answer: answer.url.endswith("/redeliver")) as answer:
        row.locator("button", has_text="Redeliver").click()  # htmx: the row is swapped in place
    assert answer.value.status == 200, answer.value.text()
    # The swapped row is the redelivery's: due now, its message on the way.
    assert row.locator("[data-delivery-status]").inner_text() == "pending"
    [first, second] = board.receiver.wait_for(path, count=2, timeout=60)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    wait_until(
        lambda: (
            "succeeded"
            in signed_in.go(f"/admin/jobs/{job['id']}")
            .locator("[data-delivery-status]")
            .inner_text()
        ),
        timeout=20,
        what="the delivery to show as succeeded",
    )


def test_overview_spend_equals_the_ledger(signed_in: Session, board: Board) -> None:
    key = board.stack.create_key("spender")
    with board.api(key) as client:
        run_job(client)
        run_job(client, model="flux-2-dev", steps=4)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    def ledger() -> int:
        [(total,)] = board.stack.sql(
            "SELECT coalesce(sum(amount_nanos), 0) FROM charges WHERE created_at >= :since",
            since=board.at(today - timedelta(days=29)),
        )
        return int(total)

    # Jobs of other tests may still be finishing: read until the ledger holds still.
    for _ in range(5):
        before = ledger()
        page = signed_in.go("/admin")
        shown = page.locator("[data-figure=spend-30d]").inner_text()
        with board.api() as api:
            usage = api.get(
                "/v1/admin/usage",
                params={
                    "from": (today - timedelta(days=29)).date().isoformat(),
                    "group_by": "model",
                },
            ).json()
        if ledger() == before:
            break
    assert Decimal(shown.removeprefix("$")) * 10**9 == before
    assert sum(Decimal(row["charged_usd"]) for row in usage["data"]) * 10**9 == before
    by_model = page.locator("[aria-labelledby=by-model] tbody tr").all()
    assert len(by_model) == len(usage["data"])


# ---- prices ------------------------------------------------------------------------------


def test_a_price_added_on_the_page_is_in_the_price_table(signed_in: Session, board: Board) -> None:
    page = signed_in.go("/admin/prices")
    page.select_option("select[name=model]", "flux-2-klein-9b")
    page.fill("input[name=effective_from]", "2031-01-01T00:00")
    page.fill("input[name=output_unit_usd]", "0.0021")
    page.fill("input[name=input_unit_usd]", "0.0003")
    page.click("form[action='/admin/prices'] button[type=submit]")
    page.wait_for_load_state()
    assert "2031-01-01 00:00:00 UTC (future)" in page.content()
    with board.api() as api:
        prices = api.get("/v1/admin/prices").json()["data"]
    [added] = [p for p in prices if p["effective_from"].startswith("2031-01-01")]
    assert added["model"] == "flux-2-klein-9b"
    assert added["output_unit_usd"] == "0.0021"


# ---- usage, jobs, reconciliation ---------------------------------------------------------


def _money(text: str) -> int:
    """ "$0.001148" as nano-USD."""
    return int(Decimal(text.strip().removeprefix("$")) * 10**9)


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_usage_totals_equal_the_api_and_the_ledger_and_the_csv_is_the_view(
    signed_in: Session, board: Board, tz: str
) -> None:
    key = board.stack.create_key(f"usage {tz}")
    with board.api(key) as client:
        run_job(client)
        run_job(client, width=1024, height=1024)
    today = datetime.now(UTC).date()
    params = {
        "from": (today - timedelta(days=3)).isoformat(),
        "to": (today + timedelta(days=2)).isoformat(),
        "tz": tz,
        "group_by": "day",
    }
    query = "&".join(f"{name}={value}" for name, value in params.items())
    for _ in range(5):  # until no other test's job lands between the reads
        with board.api() as api:
            before = api.get("/v1/admin/usage", params=params).json()
        page = signed_in.go(f"/admin/usage?{query}")
        line = page.locator("p[data-reconciliation]")  # loaded by htmx after the page
        line.wait_for()
        with board.api() as api:
            after = api.get("/v1/admin/usage", params=params).json()
        if before == after:
            break
    assert before == after
    shown_rows = [
        [cell.inner_text() for cell in row.locator("td").all()]
        for row in page.locator("table[data-usage] tbody tr").all()
    ]
    assert [row[0] for row in shown_rows] == [row["group"] for row in after["data"]]
    assert [_money(row[4]) for row in shown_rows] == [
        _money(row["charged_usd"]) for row in after["data"]
    ]
    total = _money(page.locator("[data-total-charged]").inner_text())
    assert total == _money(after["total"]["charged_usd"])
    # The reconciliation line: by key = by model = the ledger, to the nano-dollar.
    assert "reconciled to the nano-dollar" in line.inner_text()
    for part in ("key", "model", "ledger"):
        assert _money(line.locator(f"[data-sum={part}]").inner_text()) == total
    [(ledger,)] = board.stack.sql(
        "SELECT coalesce(sum(amount_nanos), 0) FROM charges"
        " WHERE created_at >= :start AND created_at < :end",
        start=board.at(datetime.fromisoformat(after["from"])),
        end=board.at(datetime.fromisoformat(after["to"])),
    )
    assert int(ledger) == total
    # The CSV link downloads exactly this view: the API's CSV of the same query.
    with page.expect_download() as download_info:
        page.click("a[data-csv]")
    downloaded = Path(download_info.value.path()).read_text()
    with board.api() as api:
        api_csv = api.get("/v1/admin/usage", params={**params, "format": "csv"}).text
    assert downloaded == api_csv
    assert downloaded.count("\n") == len(after["data"]) + 1


def test_jobs_page_filters_and_pages_without_counting(signed_in: Session, board: Board) -> None:
    key = board.stack.create_key("many jobs")
    word = uuid.uuid4().hex[:10]
    with board.api(key) as client:
        ids = [
            client.post(
                "/v1/jobs", json={"prompt": f"page {n} {word}", "width": 512, "height": 512}
            ).json()["id"]
            for n in range(53)
        ]
        for job_id in ids:
            assert wait_for_job(client, job_id, statuses=FINAL)["status"] == "succeeded"
    [(key_id,)] = board.stack.sql("SELECT api_key_id FROM jobs WHERE id = :id", id=ids[0])
    newest_first = sorted(ids, reverse=True)  # ids sort by creation time

    page = signed_in.go(f"/admin/jobs?key={key_id}")
    first = [row.get_attribute("data-job-id") for row in page.locator("tr[data-job-id]").all()]
    assert first == newest_first[:50]  # 50 a page
    # A thumbnail inside the page for each succeeded job: no request per row.
    assert page.locator("img.thumb[src^='data:image/webp;base64,']").count() == 50
    page.click("a[rel=next]")
    page.wait_for_load_state()
    rest = [row.get_attribute("data-job-id") for row in page.locator("tr[data-job-id]").all()]
    assert rest == newest_first[50:]
    assert f"key={key_id}" in page.url  # the filter stays in the URL
    assert page.locator("a[rel=next]").count() == 0
    # Thumbnails were made once.
    assert board.stack.sql(
        "SELECT count(*) FROM job_thumbnails t JOIN jobs j ON j.id = t.job_id"
        " WHERE j.api_key_id = :key_id",
        key_id=key_id,
    ) == [(53,)]

    page = signed_in.go(f"/admin/jobs?q=page+7+{word}")
    assert [r.get_attribute("data-job-id") for r in page.locator("tr[data-job-id]").all()] == [
        ids[7]
    ]
    page = signed_in.go(f"/admin/jobs?id={ids[3]}")
    assert [r.get_attribute("data-job-id") for r in page.locator("tr[data-job-id]").all()] == [
        ids[3]
    ]
    page = signed_in.go(f"/admin/jobs?key={key_id}&status=failed")
    assert page.locator("tr[data-job-id]").count() == 0
    # The filter form builds the same URL.
    page = signed_in.go("/admin/jobs")
    page.fill("input[name=q]", f"page 12 {word}")
    page.click("form.filters button[type=submit]")
    page.wait_for_load_state()
    assert [r.get_attribute("data-job-id") for r in page.locator("tr[data-job-id]").all()] == [
        ids[12]
    ]
    with httpx.Client(base_url=board.stack.api_url) as anonymous:
        refused = anonymous.get(f"/admin/jobs?key={key_id}")
    assert refused.status_code == 303  # no session: to the login form
    # What was searched for is not in the API's access log (query strings are left out).
    api_log = board.stack.process("api").log()
    assert "GET /admin/jobs HTTP/1.1" in api_log
    assert word not in api_log


def test_reconciliation_page_shows_the_ledger_per_day(signed_in: Session, board: Board) -> None:
    key = board.stack.create_key("reconciled")
    with board.api(key) as client:
        run_job(client)
    today = datetime.now(UTC).date()
    page = signed_in.go("/admin/reconciliation")
    rows = page.locator("table[data-reconciliation-days] tbody tr").all()
    cells = {
        row.locator("td").first.inner_text(): [c.inner_text() for c in row.locator("td").all()]
        for row in rows
    }
    [(charged, count)] = board.stack.sql(
        "SELECT coalesce(sum(amount_nanos), 0), count(*) FROM charges"
        " WHERE created_at >= :start AND created_at < :end",
        start=board.at(datetime.combine(today, datetime.min.time(), UTC)),
        end=board.at(datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)),
    )
    assert int(cells[today.isoformat()][1]) == count
    assert _money(cells[today.isoformat()][2]) == int(charged)


def test_overview_draws_the_spend_chart_in_utc_days(signed_in: Session, board: Board) -> None:
    with board.api(board.stack.create_key("charted")) as client:
        run_job(client)
    page = signed_in.go("/admin?days=7&stack=key")
    data = page.evaluate("JSON.parse(document.getElementById('spend-data').textContent)")
    assert len(data["x"]) == 7
    assert data["x"][-1] == int(
        datetime.combine(datetime.now(UTC).date(), datetime.min.time(), UTC).timestamp()
    )
    assert "charted" in [series["label"] for series in data["series"]]
    page.locator(".chart canvas").wait_for()  # uPlot drew it
    today_total = sum(series["values"][-1] for series in data["series"])
    shown = _money(page.locator("[data-figure=spend-today]").inner_text())
    assert round(today_total * 10**9) == shown


# ---- screenshots -------------------------------------------------------------------------

SCREENSHOTS = [
    ("overview", "/admin?days=7&stack=model"),
    ("usage", "/admin/usage?group_by=model"),
    ("keys", "/admin/keys"),
    ("jobs", "/admin/jobs"),
    ("webhooks", "/admin/webhooks?status="),
]


def test_screenshots_of_the_pages(board: Board, browser: Browser, tmp_path: Path) -> None:
    """Each page, rendered with some data, as the README shows it. The files land in
    ``tmp_path``, and also in the folder ``FLUXGATE_SCREENSHOTS`` names (how the README's
    docs/dashboard/*.png are made)."""
    budgeted = board.stack.create_key("checkout service", "--budget-usd", "0.01")
    with board.api(budgeted) as client:
        run_job(client, prompt="a product shot of a ceramic mug, studio light")
        run_job(client, model="flux-2-dev", steps=4, prompt="a mug on a wooden table")
    with board.api(board.stack.create_key("marketing site")) as client:
        run_job(client, model="flux-2-klein-9b", prompt="a lighthouse at dusk, watercolour")
        run_job(client, width=1024, height=768, prompt="a city skyline at night")
    target = os.environ.get("FLUXGATE_SCREENSHOTS")
    with browser_session(browser, board.stack.api_url) as web:
        web.page.set_viewport_size({"width": 1280, "height": 800})
        web.log_in(board.admin)
        for name, path in SCREENSHOTS:
            page = web.go(path)
            page.wait_for_load_state("networkidle")
            assert page.locator("h1").count() == 1
            assert "error" not in page.title().lower()
            shot = tmp_path / f"{name}.png"
            page.screenshot(path=str(shot), full_page=True)
            with Image.open(shot) as image:
                assert image.width == 1280
                assert image.height >= 800
                assert len(image.getcolors(1 << 16) or range(1 << 16)) > 16  # not a blank page
            if target:
                Path(target).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, Path(target) / shot.name)
        assert web.problems() == []
