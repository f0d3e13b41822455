"""HTTP adapters for jobs and quotes: parse, call the service, shape the answer."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.core.db import end_read
from app.core.errors import error_responses
from app.core.images import in_format
from app.http.body import RequestBody, StrictJSONRoute, read_body
from app.http.deps import SessionDep, SettingsDep
from app.http.sse import EventStreamResponse
from app.jobs import service, submission, watching
from app.jobs.models import FINAL_STATUSES
from app.jobs.schemas import AdminJobList, JobCost, JobList, JobOut, cost_out
from app.jobs.service import JobFilters, parse_submission
from app.jobs.timings import server_timing
from app.jobs.watching import WatchDep
from app.keys.deps import AdminKeyDep, ApiKeyDep, SubmitterDep
from app.keys.service import live_key

logger = logging.getLogger("fluxgate.api")

router = APIRouter(prefix="/v1", tags=["jobs"], route_class=StrictJSONRoute)
admin_router = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=StrictJSONRoute)

_JOB_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
        },
    }
}


async def job_body(request: Request, settings: SettingsDep) -> RequestBody:
    """The job's body, read within its bounds but not yet validated: validation and image
    decoding are CPU work on untrusted bytes, done off the event loop in the route's own
    thread-pool hop (``parse_submission``), before its transaction takes a connection."""
    return await read_body(request, max_file_bytes=settings.input_image_max_bytes)


JobBodyDep = Annotated[RequestBody, Depends(job_body)]


# Each Server-Sent Event: the Job as JSON data. As the stream's schema, since OpenAPI 3.1 has
# no itemSchema (3.2 does); validators such as Schemathesis read it per event.
JOB_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "id": {"type": "string", "description": "1, 2, 3... within the stream"},
        "event": {"type": "string", "description": "job.<status>"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/JobOut"},
        },
    },
}


def _json(body: bytes, status: int, headers: dict[str, str]) -> Response:
    """An answer already rendered (before its transaction committed)."""
    return Response(body, status_code=status, media_type="application/json", headers=headers)


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    openapi_extra=_JOB_BODY_DOC,
    summary="Submit a generation job",
    responses={
        200: {
            "description": "With `Prefer: wait=N`: the job, finished within N seconds",
            "model": JobOut,
        },
        **error_responses(402, 409),
    },
)
async def submit_job(
    request: Request,
    submitter: SubmitterDep,
    body: JobBodyDep,
    session: SessionDep,
    watch: WatchDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="same key + same body within 24 h returns the same job",
        ),
    ] = None,
    prefer: Annotated[
        str | None,
        Header(
            description="wait=N (N <= 60): answer 200 with the job once it has finished, or "
            "202 after N seconds"
        ),
    ] = None,
) -> Response:
    wait_seconds = watching.prefer_wait(prefer)
    accepted = await run_in_threadpool(
        lambda: submission.submit(
            session,
            submitter=submitter,
            submissions=[parse_submission(body, settings)],
            public_url=settings.public_url,
            idempotency_key=idempotency_key,
        )
    )
    job_id = accepted.jobs[0].id
    headers = {"Location": f"/v1/jobs/{job_id}"}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    if wait_seconds is None:
        return _json(accepted.rendered[0], 202, headers)
    headers["Preference-Applied"] = f"wait={wait_seconds}"
    try:
        waited = await watching.wait_until_final(
            watch.hub,
            [job_id],
            timeout=wait_seconds,
            disconnected=request.is_disconnected,
            submitted=not accepted.replayed,
        )
        # The ended job as its notification brought it, else as it is now.
        ended = waited.answers.get(job_id)
        latest = JobOut.model_validate_json(ended) if ended else await watch.read_job(job_id)
    except Exception:
        # The job is accepted and committed: the answer must say so, or a client that retries
        # after an error would pay twice.
        logger.warning("job %s: could not wait for it; answering as accepted", job_id)
        return _json(accepted.rendered[0], 202, headers)
    # Ended though no notification said so in time (one was lost): it is still the answer.
    finished = waited.finished or latest.status in FINAL_STATUSES
    timing = server_timing(**latest.timings.model_dump()) if finished else ""
    if timing:  # a job canceled before it started spent no time anywhere
        headers["Server-Timing"] = timing
    answer = ended or latest.model_dump_json().encode()
    return _json(answer, 200 if finished else 202, headers)


@router.get("/jobs", response_model=JobList, summary="List your jobs, newest first")
def list_jobs(
    session: SessionDep,
    api_key: ApiKeyDep,
    settings: SettingsDep,
    status: Annotated[
        str | None, Query(description="queued, running, succeeded, failed or canceled")
    ] = None,
    limit: Annotated[int, Query(description="1..100")] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JobList:
    jobs, next_cursor = service.list_jobs(
        session, api_key=api_key, status=status, limit=limit, cursor=cursor
    )
    return JobList(
        data=service.to_job_out(session, jobs, public_url=settings.public_url),
        next_cursor=next_cursor,
    )


@admin_router.get(
    "/jobs", response_model=AdminJobList, summary="Every key's jobs, newest first, filtered"
)
def list_all_jobs(
    session: SessionDep,
    _admin: AdminKeyDep,
    settings: SettingsDep,
    key_id: Annotated[str | None, Query(description="only this key's jobs")] = None,
    status: Annotated[
        str | None, Query(description="queued, running, succeeded, failed or canceled")
    ] = None,
    model: Annotated[str | None, Query(description="e.g. flux-2-klein-4b")] = None,
    start: Annotated[
        str | None,
        Query(alias="from", description="created at or after: a date (UTC) or ISO time"),
    ] = None,
    to: Annotated[str | None, Query(description="created before: a date (UTC) or ISO time")] = None,
    id: Annotated[str | None, Query(description="one job id")] = None,
    q: Annotated[
        str | None, Query(description="text the prompt contains (any case), 3..200 characters")
    ] = None,
    limit: Annotated[int, Query(description="1..100")] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> AdminJobList:
    filters = JobFilters.from_query(
        key_id=key_id, status=status, model=model, start=start, end=to, job_id=id, prompt=q
    )
    jobs, next_cursor = service.list_all_jobs(session, filters=filters, limit=limit, cursor=cursor)
    return AdminJobList(
        data=service.to_admin_job_out(session, jobs, public_url=settings.public_url),
        next_cursor=next_cursor,
    )


@router.get("/jobs/{job_id}", response_model=JobOut, summary="Get a job")
def get_job(job_id: str, session: SessionDep, api_key: ApiKeyDep, settings: SettingsDep) -> JobOut:
    job = service.get_job(session, api_key=api_key, job_id=job_id)
    return service.to_job_out(session, [job], public_url=settings.public_url)[0]


@router.get(
    "/jobs/{job_id}/events",
    summary="Server-Sent Events: the job at each status change, ending at a final status",
    response_class=EventStreamResponse,
    responses={200: {"content": {"text/event-stream": {"schema": JOB_EVENT_SCHEMA}}}},
)
def job_events(
    job_id: str, session: SessionDep, api_key: ApiKeyDep, watch: WatchDep, settings: SettingsDep
) -> EventStreamResponse:
    service.get_job(session, api_key=api_key, job_id=job_id)  # 404 unless it is the caller's
    end_read(session)  # the stream reads with sessions of its own
    return EventStreamResponse(
        watching.job_events(
            watch.hub,
            job_id,
            read_job=watch.read_job,
            keepalive_seconds=settings.events_keepalive_seconds,
        )
    )


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a queued job",
    responses=error_responses(409),
)
def cancel_job(
    job_id: str, session: SessionDep, api_key: ApiKeyDep, settings: SettingsDep
) -> JobOut:
    job = service.cancel_job(
        session, api_key=api_key, job_id=job_id, public_url=settings.public_url
    )
    return service.to_job_out(session, [job], public_url=settings.public_url)[0]


@router.get(
    "/jobs/{job_id}/image",
    summary="Download the image",
    response_class=Response,
    responses={
        200: {
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in ("image/png", "image/jpeg", "image/webp")
            }
        },
        304: {"description": "Not modified: the `If-None-Match` ETag is current"},
        **error_responses(409, 410),
    },
)
def get_image(
    job_id: str,
    session: SessionDep,
    api_key: ApiKeyDep,
    format: Annotated[Literal["png", "jpeg", "webp"] | None, Query()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    job = service.get_job(session, api_key=api_key, job_id=job_id)
    image = service.output_image(session, job=job)
    converted = format is not None and image.content_type != f"image/{format}"
    etag = f'"{image.sha256}-{format}"' if converted else f'"{image.sha256}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    assert image.data is not None  # output_image answers 410 once retention deleted it
    data, content_type = in_format(image.data, image.content_type, format)
    return Response(content=data, media_type=content_type, headers=headers)


@router.post(
    "/quote",
    response_model=JobCost,
    openapi_extra=_JOB_BODY_DOC,
    summary="Price a job without running it (counts against the key's submissions a minute)",
    tags=["billing"],
)
def quote(
    submitter: SubmitterDep, body: JobBodyDep, session: SessionDep, settings: SettingsDep
) -> JobCost:
    # Rate-limited like a submission, and checked before the body is read: a quote decodes
    # its input images just as a submission does. Refused once the key is revoked, as a
    # submission is.
    parsed = parse_submission(body, settings)
    live_key(session, key_id=submitter.id)
    priced = service.quote(session, submission=parsed)
    return cost_out(priced.cost)
