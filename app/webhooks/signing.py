"""Standard Webhooks signatures (https://www.standardwebhooks.com), by the reference library."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from standardwebhooks import Webhook


def signed_headers(
    *, message_id: str, body: str, secrets: Sequence[str], at: datetime
) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and one ``v1,`` signature per secret (two while a
    rotated-out secret is still in its grace period), space-separated as the spec says."""
    signatures = " ".join(Webhook(secret).sign(message_id, at, body) for secret in secrets)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
    }
