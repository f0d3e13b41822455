"""GET /v1/admin/jobs: every key's jobs for admins, filtered, newest first, cursor paged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.harness.stack import Stack
from tests.helpers import FINAL, assert_error, unique, wait_for_job


def all_pages(admin: httpx.Client, **params: object) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    cursor = None
    while True:
        page = admin.get(
            "/v1/admin/jobs",
            params={**params, "limit": 2, **({"cursor": cursor} if cursor else {})},
        )
        assert page.status_code == 200, page.text
        body = page.json()
        found.extend(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return found


def test_admins_list_every_keys_jobs_with_filters_and_cursor_paging(stack: Stack) -> None:
    admin = stack.client(stack.create_key("auditor", "--admin"))
    first_key, first_id, _ = stack.create_key_with_secret("tenant-a")
    second_key, second_id, _ = stack.create_key_with_secret("tenant-b")
    failing = unique("Fails 100% of the_time")
    stack.simulator.script(failing, ["3036"])
    word = unique("Lighthouse")
    with stack.client(first_key) as first, stack.client(second_key) as second:
        ids = [
            first.post(
                "/v1/jobs", json={"prompt": f"a {word} at dusk", "width": 512, "height": 512}
            ).json()["id"]
            for _ in range(3)
        ]
        ids.append(
            first.post(
                "/v1/jobs",
                json={
                    "prompt": failing,
                    "model": "flux-2-dev",
                    "steps": 4,
                    "width": 512,
                    "height": 512,
                },
            ).json()["id"]
        )
        ids.append(
            first.post("/v1/jobs", json={"prompt": "plain", "width": 512, "height": 512}).json()[
                "id"
            ]
        )
        other = second.post(
            "/v1/jobs", json={"prompt": f"their {word}", "width": 512, "height": 512}
        ).json()["id"]
        for job_id in ids:
            wait_for_job(first, job_id, statuses=FINAL)
        wait_for_job(second, other, statuses=FINAL)

        # Normal keys, of this tenant or another, get 403.
        for client in (first, second):
            assert_error(client.get("/v1/admin/jobs"), 403, "admin_required", None)
            assert_error(
                client.get("/v1/admin/jobs", params={"key_id": first_id}),
                403,
                "admin_required",
                None,
            )

    listed = all_pages(admin, key_id=first_id)
    assert [job["id"] for job in listed] == sorted(ids, reverse=True)
    assert {job["key_id"] for job in listed} == {first_id}
    assert listed[0]["object"] == "job"
    assert all("params" in job and "cost" in job for job in listed)

    def ids_for(**params: object) -> list[str]:
        response = admin.get("/v1/admin/jobs", params={"limit": 100, **params})
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["data"]]

    assert ids_for(key_id=first_id, status="failed") == [ids[3]]
    assert ids_for(key_id=first_id, model="flux-2-dev") == [ids[3]]
    assert ids_for(key_id=first_id, model="@cf/black-forest-labs/flux-2-dev") == [ids[3]]
    # Prompt text, any case, across keys; % and _ are plain characters.
    assert ids_for(q=word.lower()) == sorted([*ids[:3], other], reverse=True)
    assert ids_for(q=word.upper(), key_id=second_id) == [other]
    assert ids_for(q="100% of the_time" + failing[-11:]) == [ids[3]]
    assert ids_for(q="100%_of") == []
    assert ids_for(id=ids[1]) == [ids[1]]
    assert ids_for(id=ids[1], key_id=second_id) == []
    today = datetime.now(UTC).date()
    assert ids_for(key_id=first_id, **{"from": today.isoformat()}) == sorted(ids, reverse=True)
    assert ids_for(key_id=first_id, **{"from": (today + timedelta(days=1)).isoformat()}) == []
    assert ids_for(key_id=first_id, to=today.isoformat()) == []
    [job] = [job for job in listed if job["id"] == ids[2]]
    created = str(job["created_at"])
    assert ids_for(key_id=first_id, **{"from": created}) == sorted(ids[2:], reverse=True)
    assert ids_for(key_id=first_id, to=created) == sorted(ids[:2], reverse=True)

    for params, param in [
        ({"status": "done"}, "status"),
        ({"model": "sdxl"}, "model"),
        ({"q": "x" * 201}, "q"),
        ({"q": "ab"}, "q"),  # shorter than a trigram: it could only be found by reading all
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"from": "2026-11-02", "to": "2026-11-01"}, "to"),
        ({"cursor": "job_nope"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
    ]:
        assert_error(admin.get("/v1/admin/jobs", params=params), 422, "invalid_parameter", param)
