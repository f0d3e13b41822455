"""What every HTML page of ours tells the browser, whichever page it is (the dashboard's, the
API docs'): no sniffing, no framing, no referrer outside, no shared browsing context. Each page
adds its own Content-Security-Policy."""

from __future__ import annotations

BROWSER_PAGE_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}
