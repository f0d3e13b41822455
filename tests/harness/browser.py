"""A real browser for the dashboard: Debian's Chromium driven by Playwright, headless, kept on
127.0.0.1 (every other request is refused and remembered), with its console watched for
Content-Security-Policy violations and script errors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    Route,
    sync_playwright,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
LOCAL = re.compile(r"^(https?|wss?)://127\.0\.0\.1(:\d+)?/")


@contextmanager
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise RuntimeError(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Session:
    """One browser profile (its own cookies), what it tried to fetch elsewhere, what its
    console said."""

    context: BrowserContext
    page: Page
    base_url: str
    blocked: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def go(self, path: str) -> Page:
        self.page.goto(self.base_url + path)
        return self.page

    def log_in(self, key: str, *, here: bool = False) -> Page:
        """Sign in with ``key``, on the login form the page is at (``here``) or a new one."""
        if not here:
            self.go("/admin/login")
        self.page.fill("#key", key)
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state()
        return self.page

    def problems(self) -> list[str]:
        """Requests that tried to leave 127.0.0.1, and console errors (a CSP violation is
        one: "Refused to load/execute/apply ...")."""
        return [f"left 127.0.0.1: {url}" for url in self.blocked] + self.console

    def cookie(self, name: str) -> dict[str, object] | None:
        for cookie in self.context.cookies():
            if cookie["name"] == name:
                return dict(cookie)
        return None


@contextmanager
def browser_session(browser: Browser, base_url: str) -> Iterator[Session]:
    context = browser.new_context(base_url=base_url)
    page = context.new_page()
    session = Session(context=context, page=page, base_url=base_url)

    def only_local(route: Route) -> None:
        url = route.request.url
        if LOCAL.match(url) or url.startswith(("data:", "blob:", "about:")):
            route.continue_()
        else:
            session.blocked.append(url)
            route.abort()

    context.route("**/*", only_local)

    def on_console(message: ConsoleMessage) -> None:
        # A page answered with 401 or 422 on purpose logs "Failed to load resource"; that is
        # the page's own status, not a problem. What matters: the CSP refusing something.
        text = message.text
        if "Content Security Policy" in text or text.startswith("Refused to"):
            session.console.append(f"console {message.type}: {text}")

    def on_response(response: Response) -> None:
        # Every script, style, image and fragment a page loads must be there.
        if response.request.resource_type != "document" and response.status >= 400:
            session.console.append(f"HTTP {response.status} for {response.url}")

    page.on("console", on_console)
    page.on("response", on_response)
    page.on("pageerror", lambda error: session.console.append(f"page error: {error}"))
    try:
        yield session
    finally:
        context.close()
