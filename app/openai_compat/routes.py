"""``POST /v1/images/generations`` and ``/v1/images/edits`` in OpenAI's shape, so the official
client works unchanged; plus the expiring links that ``response_format: url`` hands out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.db import end_read
from app.core.errors import InvalidParameter, UpstreamFailed, WaitTimeout, error_responses
from app.core.images import in_format
from app.core.settings import Settings
from app.http.body import RequestBody, StrictJSONRoute, read_body
from app.http.deps import SessionDep, SettingsDep
from app.jobs import service as job_service
from app.jobs import submission, watching
from app.jobs.models import Job, JobStatus
from app.jobs.watching import Watch, WatchDep
from app.keys.deps import SubmitterDep
from app.keys.known import Submitter
from app.openai_compat import service
from app.openai_compat.schemas import (
    OPENAI_PREFIX,
    ImagesEdit,
    ImagesGenerate,
    ImagesResponse,
    request_body,
)

router = APIRouter(
    prefix=OPENAI_PREFIX.rstrip("/"), tags=["openai-compatible"], route_class=StrictJSONRoute
)


@dataclass(frozen=True)
class ImagesCall:
    """One image request: its body, its caller (within the submission rate), and what answering
    it takes."""

    request: Request
    response: Response
    body: RequestBody
    submitter: Submitter
    session: Session
    watch: Watch
    settings: Settings


async def images_call(
    request: Request,
    response: Response,
    submitter: SubmitterDep,
    session: SessionDep,
    watch: WatchDep,
    settings: SettingsDep,
) -> ImagesCall:
    body = await read_body(request, max_file_bytes=settings.input_image_max_bytes)
    return ImagesCall(request, response, body, submitter, session, watch, settings)


ImagesCallDep = Annotated[ImagesCall, Depends(images_call)]


def _create_jobs(
    session: Session, submitter: Submitter, parsed: service.ImagesRequest
) -> list[str]:
    return submission.create_jobs(session, submitter=submitter, submissions=parsed.submissions)


def _states(session: Session, job_ids: Sequence[str]) -> tuple[dict[str, Job], str]:
    states = service.job_states(session, job_ids=job_ids)
    timing = job_service.server_timing_of(session, jobs=list(states.values()))
    end_read(session)
    return states, timing


async def _wait(call: ImagesCall, job_ids: Sequence[str], timeout: float) -> list[Job]:
    request, session, watch = call.request, call.session, call.watch
    waited = await watching.wait_until_final(
        watch.hub,
        job_ids,
        timeout=timeout,
        disconnected=request.is_disconnected,
        submitted=True,
    )
    if not waited.finished:
        raise WaitTimeout(
            f"the images are not ready after {timeout:.0f}s; they are still being made as "
            f"jobs {', '.join(job_ids)} (GET /v1/jobs/{{id}})"
        )
    states, timing = await run_in_threadpool(_states, session, job_ids)
    if timing:
        call.response.headers["Server-Timing"] = timing
    return [states[job_id] for job_id in job_ids]


async def _run(call: ImagesCall, parsed: service.ImagesRequest) -> dict[str, Any]:
    request, session, settings = call.request, call.session, call.settings
    job_ids = await run_in_threadpool(_create_jobs, session, call.submitter, parsed)
    jobs = await _wait(call, job_ids, settings.openai_wait_seconds)
    if not any(job.status == JobStatus.SUCCEEDED for job in jobs):
        failed = jobs[0]
        raise UpstreamFailed(
            failed.error_message or f"the job ended {failed.status}",
            code=failed.error_code or "upstream_failed",
        )
    base_url = (settings.public_url or str(request.base_url)).rstrip("/")

    # The links it makes are committed once this answer is rendered.
    return await run_in_threadpool(
        lambda: service.images_response(
            session,
            jobs=jobs,
            response_format=parsed.response_format,
            output_format=parsed.output_format,
            base_url=base_url,
            ttl_seconds=settings.image_url_ttl_seconds,
        )
    )


@router.post(
    "/generations",
    summary="OpenAI-compatible image generation",
    response_model=ImagesResponse,
    openapi_extra=request_body(ImagesGenerate, "application/json", "multipart/form-data"),
    responses=error_responses(402, 502, 504),
)
async def generations(call: ImagesCallDep) -> dict[str, Any]:
    body, settings = call.body, call.settings
    if body.files:
        raise InvalidParameter("generations take no images; use /v1/images/edits", param="image")
    parsed = await run_in_threadpool(
        lambda: service.parse_images_request(
            body.fields, is_form=body.is_form, images=[], settings=settings
        )
    )
    return await _run(call, parsed)


@router.post(
    "/edits",
    summary="OpenAI-compatible image edits (multipart image / image[])",
    response_model=ImagesResponse,
    openapi_extra=request_body(ImagesEdit, "multipart/form-data"),
    responses=error_responses(402, 502, 504),
)
async def edits(call: ImagesCallDep) -> dict[str, Any]:
    body, settings = call.body, call.settings
    if "mask" in body.file_names or "mask" in body.fields:
        raise InvalidParameter(
            "mask is not supported: FLUX.2 on Workers AI edits from the prompt and the reference "
            "images, without masks",
            param="mask",
        )
    images: list[tuple[str, bytes]] = []
    for index, (name, data) in enumerate(body.files):
        if name not in ("image", "image[]"):
            raise InvalidParameter(
                f"unexpected file part {name}", code="unknown_parameter", param=name
            )
        images.append((f"image[{index}]", data))
    if not images:
        raise InvalidParameter("image is required", code="missing_parameter", param="image")
    parsed = await run_in_threadpool(
        lambda: service.parse_images_request(
            body.fields, is_form=body.is_form, images=images, settings=settings
        )
    )
    return await _run(call, parsed)


@router.get(
    "/shared/{token}",
    summary="An image behind an expiring link (no API key needed)",
    response_class=Response,
    responses=error_responses(410),
)
def shared_image(token: str, session: SessionDep, format: str | None = None) -> Response:
    image, seconds_left = service.linked_image(session, token=token)
    if format is not None and format not in ("png", "jpeg", "webp"):
        raise InvalidParameter("format must be png, jpeg or webp", param="format")
    assert image.data is not None  # linked_image answers 410 once retention deleted it
    data, content_type = in_format(image.data, image.content_type, format)
    return Response(
        content=data,
        media_type=content_type,
        headers={"Cache-Control": f"private, max-age={max(0, seconds_left)}"},
    )
