"""Webhooks end to end: real deliveries to a receiver on 127.0.0.x, verified with the
``standardwebhooks`` package; retries, 410, redirects, a hanging and an endless receiver,
rotation, redelivery, SSRF refusals at submit and at delivery, and the queue of their own.
Both backends."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.harness.processes import Process, wait_until
from tests.harness.stack import Stack, running_gateway
from tests.helpers import unique, wait_for_job
from tests.receiver import GIGABYTE, Receiver

SCHEDULE = "0,1,1"  # three attempts, a second apart (production: immediately ... 24 h)


def slug(name: str) -> str:
    """A unique, URL-safe path segment."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


@dataclass
class Hooks:
    stack: Stack
    receiver: Receiver
    other_loopback: Receiver  # 127.0.0.2: allowed by the API, not by the webhook worker
    key: str
    key_id: str
    secret: str
    admin: str
    webhook_worker: Process

    def start_webhook_worker(self) -> None:
        self.webhook_worker = self.stack.start_worker(
            2, queues="webhooks", webhook_allowed_networks="127.0.0.1/32"
        )

    def client(self, key: str | None = None) -> httpx.Client:
        return self.stack.client(key or self.key)

    def submit(self, url: str, prompt: str | None = None, **fields: Any) -> str:
        with self.client() as http:
            answer = http.post(
                "/v1/jobs",
                json={"prompt": prompt or unique("hook"), "webhook_url": url, **fields},
            )
        assert answer.status_code == 202, answer.text
        assert answer.json()["webhook_url"] == url
        return str(answer.json()["id"])

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        with self.client() as http:
            answer = http.get(f"/v1/jobs/{job_id}/deliveries")
        assert answer.status_code == 200, answer.text
        return list(answer.json()["data"])

    def settled_delivery(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        """The job's one delivery, once it has stopped retrying."""
        found: dict[str, Any] = {}

        def settled() -> bool:
            nonlocal found
            rows = self.deliveries(job_id)
            found = rows[0] if rows else {}
            return bool(rows) and rows[0]["status"] != "pending"

        wait_until(settled, timeout=timeout, what=f"delivery of {job_id} to settle")
        return found


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def hooks(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Hooks]:
    receiver = Receiver("127.0.0.1")
    other = Receiver("127.0.0.2")
    try:
        with running_gateway(
            log_dir,
            backend=request.param,
            latency=0.05,
            worker=False,
            webhook_allowed_networks="127.0.0.0/8",
            webhook_retry_schedule=SCHEDULE,
            webhook_timeout_seconds="2",
        ) as stack:
            # Image jobs and webhooks in workers of their own, as docker-compose.yml runs them.
            stack.start_worker(queues="jobs,maintenance")
            webhook_worker = stack.start_worker(
                2, queues="webhooks", webhook_allowed_networks="127.0.0.1/32"
            )
            key, key_id, secret = stack.create_key_with_secret("hooks")
            admin = stack.create_key("admin", "--admin")
            yield Hooks(stack, receiver, other, key, key_id, secret, admin, webhook_worker)
    finally:
        receiver.close()
        other.close()


def verify(secret: str, request: Any) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return payload


def test_a_succeeded_job_is_delivered_signed(hooks: Hooks) -> None:
    path = f"/ok/{slug('succeeded')}"
    job_id = hooks.submit(hooks.receiver.url(path))
    [received] = hooks.receiver.wait_for(path)
    event = verify(hooks.secret, received)
    assert event["type"] == "job.succeeded"
    assert event["timestamp"].endswith("Z")
    job = event["data"]
    assert job["id"] == job_id
    assert job["status"] == "succeeded"
    assert job["object"] == "job"
    assert job["output"]["image_url"] == f"/v1/jobs/{job_id}/image"
    assert job["cost"]["charged"] == job["cost"]["estimated"]
    # A link to the image, never the image: the body is a few hundred bytes.
    assert len(received.body) < 4096
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["webhook-id"].startswith("msg_")
    assert abs(int(received.headers["webhook-timestamp"]) - time.time()) < 60
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(received.body, received.headers)

    delivery = hooks.settled_delivery(job_id)
    assert delivery["id"] == received.headers["webhook-id"]
    assert delivery["status"] == "succeeded"
    assert delivery["event_type"] == "job.succeeded"
    [attempt] = delivery["attempts"]
    assert attempt["status_code"] == 200
    assert attempt["error"] is None
    assert attempt["next_attempt_at"] is None
    assert attempt["duration_ms"] >= 0
    assert attempt["response_excerpt"] == '{"received": true}'


def test_failed_job_is_delivered_as_job_failed(hooks: Hooks) -> None:
    prompt = unique("fails")
    hooks.stack.simulator.script(prompt, ["3036"])  # a final upstream error
    path = f"/ok/{slug('failed')}"
    job_id = hooks.submit(hooks.receiver.url(path), prompt=prompt)
    [received] = hooks.receiver.wait_for(path)
    event = verify(hooks.secret, received)
    assert event["type"] == "job.failed"
    assert event["data"]["id"] == job_id
    assert event["data"]["error"]["upstream_code"] == 3036
    assert event["data"]["cost"]["charged"] == "0"


def test_500_then_200_is_retried_with_the_same_webhook_id(hooks: Hooks) -> None:
    name = slug("flaky")
    hooks.receiver.scripts[name] = [500]
    path = f"/script/{name}"
    job_id = hooks.submit(hooks.receiver.url(path))
    first, second = hooks.receiver.wait_for(path, count=2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body  # the event is fixed when it happens
    verify(hooks.secret, first)
    verify(hooks.secret, second)
    assert second.at - first.at >= 0.9  # the schedule's second delay: 1 s (+ jitter)
    delivery = hooks.settled_delivery(job_id)
    assert delivery["status"] == "succeeded"
    assert delivery["attempt_count"] == 2
    failed, ok = delivery["attempts"]
    assert failed["status_code"] == 500
    assert "500" in failed["error"]
    assert failed["next_attempt_at"] is not None
    assert ok["status_code"] == 200
    assert ok["next_attempt_at"] is None
    time.sleep(1.5)
    assert len(hooks.receiver.to(path)) == 2  # nothing more once delivered


def test_410_stops_retries(hooks: Hooks) -> None:
    path = f"/status/410/{slug('gone')}"
    job_id = hooks.submit(hooks.receiver.url(path))
    hooks.receiver.wait_for(path)
    delivery = hooks.settled_delivery(job_id)
    assert delivery["status"] == "failed"
    assert delivery["last_status_code"] == 410
    assert "410" in delivery["last_error"]
    time.sleep(3)  # longer than the whole schedule
    assert len(hooks.receiver.to(path)) == 1


def test_retries_stop_when_the_schedule_runs_out_then_an_admin_redelivers(hooks: Hooks) -> None:
    name = slug("down")
    hooks.receiver.scripts[name] = [503, 503, 503]
    path = f"/script/{name}"
    job_id = hooks.submit(hooks.receiver.url(path))
    delivery = hooks.settled_delivery(job_id)
    assert delivery["status"] == "failed"
    assert delivery["attempt_count"] == 3
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 503, 503]
    assert delivery["attempts"][-1]["next_attempt_at"] is None
    assert len(hooks.receiver.to(path)) == 3

    with hooks.client(hooks.admin) as admin:
        failing = admin.get("/v1/admin/webhook-deliveries", params={"status": "failing"})
        assert failing.status_code == 200
        assert delivery["id"] in [row["id"] for row in failing.json()["data"]]
        # Normal keys cannot use the admin routes.
        with hooks.client() as normal:
            assert normal.get("/v1/admin/webhook-deliveries").status_code == 403
            redo = normal.post(f"/v1/admin/webhook-deliveries/{delivery['id']}/redeliver")
            assert redo.status_code == 403
        # The receiver is back: a redelivery reaches it with the same webhook-id.
        redone = admin.post(f"/v1/admin/webhook-deliveries/{delivery['id']}/redeliver")
        assert redone.status_code == 200, redone.text
        assert redone.json()["status"] == "pending"
        received = hooks.receiver.wait_for(path, count=4)
        assert received[-1].headers["webhook-id"] == delivery["id"]
        verify(hooks.secret, received[-1])
        wait_until(
            lambda: (
                admin.get(f"/v1/admin/webhook-deliveries/{delivery['id']}").json()["status"]
                == "succeeded"
            ),
            timeout=20,
            what="redelivery to succeed",
        )
        assert admin.post("/v1/admin/webhook-deliveries/msg_nope/redeliver").status_code == 404


def test_redirects_are_not_followed(hooks: Hooks) -> None:
    path = f"/redirect/{slug('moved')}"
    job_id = hooks.submit(hooks.receiver.url(path))
    delivery = hooks.settled_delivery(job_id)
    assert delivery["status"] == "failed"
    assert [a["status_code"] for a in delivery["attempts"]] == [302, 302, 302]
    assert "redirect" in delivery["last_error"]
    assert hooks.receiver.to("/ok/redirected") == []


def test_a_hanging_receiver_is_cut_off_at_the_timeout(hooks: Hooks) -> None:
    path = f"/hang/{slug('hang')}"
    job_id = hooks.submit(hooks.receiver.url(path))
    delivery = hooks.settled_delivery(job_id, timeout=40)
    assert delivery["status"] == "failed"
    assert delivery["attempt_count"] == 3
    for attempt in delivery["attempts"]:
        assert attempt["status_code"] is None
        assert "no answer within 2s" in attempt["error"]
        assert 1900 <= attempt["duration_ms"] < 6000


def test_an_endless_answer_is_read_only_to_64_kib(hooks: Hooks) -> None:
    path = f"/huge/{slug('huge')}"
    job_id = hooks.submit(hooks.receiver.url(path))
    delivery = hooks.settled_delivery(job_id)
    # A 2xx status is a delivery; the body beyond 64 KiB is never read.
    assert delivery["status"] == "succeeded"
    [attempt] = delivery["attempts"]
    assert attempt["duration_ms"] < 2000
    assert len(attempt["response_excerpt"]) <= 1024
    wait_until(lambda: path in hooks.receiver.huge_bytes_sent, timeout=20, what="hang-up")
    # What the receiver managed to push before the gateway hung up: socket buffers, not 1 GB.
    assert hooks.receiver.huge_bytes_sent[path] < 64 * 1024 * 1024 < GIGABYTE


def test_the_delivery_checks_the_address_it_connects_to(hooks: Hooks) -> None:
    # The API allows 127.0.0.0/8, the webhook worker only 127.0.0.1: the submit passes and
    # the delivery must still refuse, because it checks again, on the address it resolved.
    path = f"/ok/{slug('recheck')}"
    job_id = hooks.submit(hooks.other_loopback.url(path))
    delivery = hooks.settled_delivery(job_id)
    assert delivery["status"] == "failed"
    assert delivery["attempt_count"] == 1
    assert "127.0.0.2" in delivery["last_error"]
    assert "not a public address" in delivery["last_error"]
    assert hooks.other_loopback.to(path) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://172.16.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://0xa9fea9fe/",
        "http://2852039166/",
        "http://0251.0376.0251.0376/",
        "http://169.254.43518/",
        "http://100.64.0.1/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://0.0.0.0/",
        "https://8.8.8.8:99999/",
        "ftp://8.8.8.8/",
        "file:///etc/passwd",
        "http://user:pass@127.0.0.1/",
        "http://8.8.8.8/",  # plain http is for allowed networks only
        "https://no-such-host.invalid/",
    ],
)
def test_unsafe_webhook_urls_are_refused_at_submit(hooks: Hooks, url: str) -> None:
    with hooks.client() as http:
        for send in (
            lambda: http.post("/v1/jobs", json={"prompt": "x", "webhook_url": url}),
            lambda: http.post(
                "/v1/jobs", files={"prompt": (None, "x"), "webhook_url": (None, url)}
            ),
        ):
            answer = send()
            assert answer.status_code == 422, answer.text
            error = answer.json()["error"]
            assert error["param"] == "webhook_url"
            assert error["code"] == "invalid_parameter"
            assert error["message"]


def test_rotation_signs_with_both_secrets_during_the_grace_period(hooks: Hooks) -> None:
    key, key_id, old_secret = hooks.stack.create_key_with_secret("rotating")
    with hooks.client(hooks.admin) as admin:
        rotated = admin.post(f"/v1/admin/keys/{key_id}/webhook-secret", json={})
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["webhook_secret"]
    assert new_secret.startswith("whsec_")
    assert new_secret != old_secret
    path = f"/ok/{slug('rotated')}"
    with hooks.client(key) as http:
        answer = http.post(
            "/v1/jobs", json={"prompt": "rotate", "webhook_url": hooks.receiver.url(path)}
        )
        assert answer.status_code == 202
    [received] = hooks.receiver.wait_for(path)
    assert len(received.headers["webhook-signature"].split(" ")) == 2
    verify(old_secret, received)  # receivers still on the old secret keep working
    verify(new_secret, received)

    # Without a grace period the old secret stops at once (the CLI rotates too).
    out = hooks.stack.cli("keys", "rotate-webhook-secret", key_id, "--grace-seconds", "0", "--json")
    newest = json.loads(out.stdout)["webhook_secret"]
    path = f"/ok/{slug('rotated-again')}"
    with hooks.client(key) as http:
        http.post("/v1/jobs", json={"prompt": "rotate", "webhook_url": hooks.receiver.url(path)})
    [received] = hooks.receiver.wait_for(path)
    assert len(received.headers["webhook-signature"].split(" ")) == 1
    verify(newest, received)
    with pytest.raises(WebhookVerificationError):
        verify(new_secret, received)


def test_slow_receivers_do_not_delay_image_jobs(hooks: Hooks) -> None:
    # Six deliveries to a receiver that never answers keep the webhook worker (2 threads,
    # 2 s timeout) busy for at least 6 s; plain jobs submitted after them still finish at once.
    hanging = [hooks.submit(hooks.receiver.url(f"/hang/{slug('slow')}")) for _ in range(6)]
    with hooks.client() as http:
        plain = [
            http.post("/v1/jobs", json={"prompt": unique("plain")}).json()["id"] for _ in range(5)
        ]
        started = time.monotonic()
        for job_id in plain:
            assert wait_for_job(http, job_id, statuses={"succeeded"})["status"] == "succeeded"
        elapsed = time.monotonic() - started
    waiting = [hooks.deliveries(job_id)[0] for job_id in hanging]
    # The webhook backlog is still there, and the image jobs did not wait for it.
    assert any(delivery["attempt_count"] == 0 for delivery in waiting)
    assert elapsed < 5


def test_deliveries_of_a_job_are_its_owners_only(hooks: Hooks) -> None:
    path = f"/ok/{slug('owner')}"
    job_id = hooks.submit(hooks.receiver.url(path))
    hooks.receiver.wait_for(path)
    other = hooks.stack.create_key("other")
    with hooks.client(other) as http:
        answer = http.get(f"/v1/jobs/{job_id}/deliveries")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "job_not_found"
    assert len(hooks.deliveries(job_id)) == 1


def test_a_due_delivery_without_a_message_is_sent_by_the_sweeper(hooks: Hooks) -> None:
    # A retry due later than a broker countdown covers, a message the broker lost, or an
    # attempt whose worker died: the row is due and nothing is on its way. The sweeper sends it.
    path = f"/ok/{slug('swept')}"
    job_id = hooks.submit(hooks.receiver.url(path))
    [first] = hooks.receiver.wait_for(path)
    delivery = hooks.settled_delivery(job_id)
    hooks.stack.execute(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = created_at, "
        "enqueued_at = NULL, completed_at = NULL, schedule_step = 0 WHERE id = :id",
        id=delivery["id"],
    )
    _, again = hooks.receiver.wait_for(path, count=2, timeout=20)
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    verify(hooks.secret, again)
    assert hooks.settled_delivery(job_id)["attempt_count"] == 2
    time.sleep(2)  # swept once: the sent attempt is not sent again
    assert len(hooks.receiver.to(path)) == 2


def test_a_worker_killed_mid_attempt_loses_no_delivery(hooks: Hooks) -> None:
    path = f"/hangonce/{slug('killed')}"
    job_id = hooks.submit(hooks.receiver.url(path))
    [first] = hooks.receiver.wait_for(path)  # the attempt is in flight: the receiver holds it
    hooks.webhook_worker.kill()
    hooks.start_webhook_worker()
    # The dead attempt's lease runs out (2 x 2 s + 5 s here); the sweeper sends it again.
    _, second = hooks.receiver.wait_for(path, count=2, timeout=40)
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    verify(hooks.secret, second)
    delivery = hooks.settled_delivery(job_id)
    assert delivery["status"] == "succeeded"
    assert delivery["attempt_count"] == 2
    assert [a["status_code"] for a in delivery["attempts"]] == [200]  # the dead one left none
