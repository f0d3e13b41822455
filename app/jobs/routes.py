"""HTTP adapters for jobs and quotes: parse, call the service, commit, then enqueue."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.deps import ApiKeyDep, SessionDep, SubmitterDep, WatchDep
from app.http_body import StrictJSONRoute, read_body
from app.images import convert_image
from app.jobs import idempotency, service, watching
from app.jobs.models import Job
from app.jobs.schemas import JobCost, JobList, JobOut
from app.jobs.service import JobSubmission, parse_submission
from app.keys.models import ApiKey
from app.settings import get_settings
from app.sse import EventStreamResponse
from worker.dispatch import enqueue_forward

logger = logging.getLogger("fluxgate.api")

router = APIRouter(prefix="/v1", tags=["jobs"], route_class=StrictJSONRoute)

_JOB_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
        },
    }
}


def commit_and_enqueue(session: Session, job_ids: Sequence[str]) -> None:
    """Commit the new jobs, then send their ids to the broker (never before the commit)."""
    session.commit()
    for job_id in job_ids:
        try:
            enqueue_forward(job_id)
        except Exception:
            # The job is committed, so it is not lost: the sweeper sends it at its next pass.
            logger.warning("broker unavailable; job %s left for the sweeper", job_id, exc_info=True)
            service.mark_not_enqueued(session, job_id=job_id)
            session.commit()


async def job_body(request: Request) -> JobSubmission:
    settings = get_settings()
    body = await read_body(
        request,
        max_bytes=settings.max_request_bytes,
        max_file_bytes=settings.input_image_max_bytes,
    )
    # Validation and image decoding are CPU work on untrusted bytes: off the event loop.
    return await run_in_threadpool(parse_submission, body, settings)


JobBodyDep = Annotated[JobSubmission, Depends(job_body)]


def _submit(
    session: Session, api_key: ApiKey, body: JobSubmission, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Create (or, for a repeated Idempotency-Key, find) the job; whether it was a replay."""
    if idempotency_key is None:
        job = service.create_job(session, api_key=api_key, submission=body)
        commit_and_enqueue(session, [job.id])
        return job, False
    key = idempotency.check_key(idempotency_key)
    earlier = idempotency.reserve(
        session, api_key_id=api_key.id, key=key, fingerprint=idempotency.fingerprint(body)
    )
    session.commit()  # the reservation is visible to concurrent duplicates from here on
    if earlier is not None:
        job = service.get_job(session, api_key=api_key, job_id=earlier)
        # End the read (commit keeps the loaded job): a waiting request holds no connection.
        session.commit()
        return job, True
    try:
        job = service.create_job(session, api_key=api_key, submission=body)
        idempotency.complete(session, api_key_id=api_key.id, key=key, job_id=job.id)
        commit_and_enqueue(session, [job.id])
    except BaseException:
        session.rollback()
        idempotency.release(session, api_key_id=api_key.id, key=key)
        session.commit()
        raise
    return job, False


def _job_out(session: Session, job: Job) -> JobOut:
    out = service.to_job_out(session, [job])[0]
    session.rollback()  # end the read: a waiting request holds no connection
    return out


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    openapi_extra=_JOB_BODY_DOC,
    summary="Submit a generation job",
    responses={
        200: {"description": "With `Prefer: wait=N`: the job, finished within N seconds"},
        422: {"description": "A field broke a rule; `param` names it"},
    },
)
async def submit_job(
    request: Request,
    api_key: SubmitterDep,
    body: JobBodyDep,
    session: SessionDep,
    response: Response,
    watch: WatchDep,
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
) -> JobOut:
    wait_seconds = watching.prefer_wait(prefer)
    job, replayed = await run_in_threadpool(_submit, session, api_key, body, idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if wait_seconds is not None:
        response.headers["Preference-Applied"] = f"wait={wait_seconds}"
        finished = await watching.wait_until_final(
            watch.hub,
            [job.id],
            timeout=wait_seconds,
            disconnected=request.is_disconnected,
        )
        if finished:
            response.status_code = 200
        return await watch.read_job(job.id)
    return await run_in_threadpool(_job_out, session, job)


@router.get("/jobs", response_model=JobList, summary="List your jobs, newest first")
def list_jobs(
    session: SessionDep,
    api_key: ApiKeyDep,
    status: Annotated[
        str | None, Query(description="queued, running, succeeded, failed or canceled")
    ] = None,
    limit: Annotated[int, Query(description="1..100")] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JobList:
    jobs, next_cursor = service.list_jobs(
        session, api_key=api_key, status=status, limit=limit, cursor=cursor
    )
    return JobList(data=service.to_job_out(session, jobs), next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut, summary="Get a job")
def get_job(job_id: str, session: SessionDep, api_key: ApiKeyDep) -> JobOut:
    job = service.get_job(session, api_key=api_key, job_id=job_id)
    return service.to_job_out(session, [job])[0]


@router.get(
    "/jobs/{job_id}/events",
    summary="Server-Sent Events: the job at each status change, ending at a final status",
    response_class=EventStreamResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def job_events(
    job_id: str, session: SessionDep, api_key: ApiKeyDep, watch: WatchDep
) -> EventStreamResponse:
    service.get_job(session, api_key=api_key, job_id=job_id)  # 404 unless it is the caller's
    session.commit()  # end the read; the stream reads with sessions of its own
    return EventStreamResponse(
        watching.job_events(
            watch.hub,
            job_id,
            read_job=watch.read_job,
            keepalive_seconds=get_settings().events_keepalive_seconds,
        )
    )


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a queued job")
def cancel_job(job_id: str, session: SessionDep, api_key: ApiKeyDep) -> JobOut:
    job = service.cancel_job(session, api_key=api_key, job_id=job_id)
    session.commit()
    return service.to_job_out(session, [job])[0]


@router.get(
    "/jobs/{job_id}/image",
    summary="Download the image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
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
    if format is not None and converted:
        data, content_type = convert_image(image.data, format)
    else:
        data, content_type = image.data, image.content_type
    return Response(content=data, media_type=content_type, headers=headers)


@router.post(
    "/quote",
    response_model=JobCost,
    openapi_extra=_JOB_BODY_DOC,
    summary="Price a job without running it",
    tags=["billing"],
)
def quote(api_key: ApiKeyDep, body: JobBodyDep, session: SessionDep) -> JobCost:
    priced = service.quote(session, submission=body)
    return service.cost_out(priced.cost)
