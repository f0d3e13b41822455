"""OpenAI's Images API on top of jobs: translate a request into n jobs, and finished jobs
into OpenAI's response. No HTTP here: the routes own waiting and the transaction."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidParameter, NotFound
from app.core.images import in_format
from app.core.orm import utcnow
from app.core.settings import Settings
from app.jobs import retention
from app.jobs.inputs import input_limits, prepare_all
from app.jobs.models import ImageLink, Job, JobImage, JobStatus
from app.jobs.schemas import parse_job_create
from app.jobs.service import JobSubmission
from app.upstream import catalog

MAX_N = 4
DEFAULT_SIZE = "1024x1024"
# OpenAI parameters that mean nothing for FLUX.2 on Workers AI; accepted and ignored so an
# unchanged client works.
IGNORED = frozenset({"quality", "style", "user", "moderation", "background"})
# Fluxgate's own knobs, usable through the OpenAI shape too.
PASSED_THROUGH = ("seed", "guidance", "steps", "metadata")
ResponseFormat = Literal["url", "b64_json"]
_SIZE = re.compile(r"(\d{2,5})x(\d{2,5})")
# Our field names as OpenAI's client knows them, for `param` in errors.
OPENAI_PARAMS = {"width": "size", "height": "size", "input_images": "image"}


@dataclass(frozen=True)
class ImagesRequest:
    submissions: list[JobSubmission]
    response_format: ResponseFormat
    output_format: str | None


def _field(fields: dict[str, Any], name: str, default: Any) -> Any:
    value = fields.get(name)
    return default if value is None or value == "" else value


def parse_images_request(
    fields: dict[str, Any],
    *,
    is_form: bool,
    images: Sequence[tuple[str, bytes]],
    settings: Settings,
) -> ImagesRequest:
    """Validate an OpenAI generations or edits request into one submission per image."""
    allowed = {
        "prompt",
        "model",
        "n",
        "size",
        "response_format",
        "output_format",
        "stream",
        *IGNORED,
        *PASSED_THROUGH,
    }
    for name in fields:
        if name not in allowed:
            raise InvalidParameter(
                f"unknown parameter {name}", code="unknown_parameter", param=name
            )
    if str(_field(fields, "stream", "false")).lower() not in ("false", "0"):
        raise InvalidParameter("streaming is not supported", param="stream")

    n = _field(fields, "n", 1)
    if isinstance(n, str) and n.isdigit():
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise InvalidParameter(f"n must be an integer from 1 to {MAX_N}", param="n")

    size = str(_field(fields, "size", DEFAULT_SIZE))
    size = DEFAULT_SIZE if size == "auto" else size
    match = _SIZE.fullmatch(size)
    if match is None:
        raise InvalidParameter(f"size must look like 1024x768, not {size!r}", param="size")
    width, height = int(match.group(1)), int(match.group(2))

    response_format = _field(fields, "response_format", "url")
    if response_format not in ("url", "b64_json"):
        raise InvalidParameter("response_format must be url or b64_json", param="response_format")
    output_format = fields.get("output_format")
    if output_format is not None and output_format not in ("png", "jpeg", "webp"):
        raise InvalidParameter("output_format must be png, jpeg or webp", param="output_format")

    job_fields: dict[str, Any] = {
        "model": _field(fields, "model", catalog.DEFAULT_MODEL),
        "prompt": fields.get("prompt"),
        "width": width,
        "height": height,
        **{name: fields[name] for name in PASSED_THROUGH if name in fields},
    }
    # Size was parsed above, so the width and height are ints even in a form.
    if is_form:
        job_fields["width"], job_fields["height"] = str(width), str(height)
    request = parse_job_create(
        job_fields, from_form=is_form, prompt_max_chars=settings.prompt_max_chars
    )
    inputs = prepare_all(
        [(label, "image", data) for label, data in images],
        limits=input_limits(settings),
        param="image",
    )
    submissions = []
    for index in range(n):
        # Different seeds, so n images are n different pictures.
        seed = None if request.seed is None else (request.seed + index) % (catalog.MAX_SEED + 1)
        submissions.append(
            JobSubmission(request=request.model_copy(update={"seed": seed}), inputs=inputs)
        )
    return ImagesRequest(
        submissions=submissions, response_format=response_format, output_format=output_format
    )


def job_states(session: Session, *, job_ids: Sequence[str]) -> dict[str, Job]:
    return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))}


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_link(session: Session, *, job_id: str, ttl_seconds: int) -> str:
    """A fresh token for an expiring link to the job's image; only its hash is stored."""
    token = secrets.token_urlsafe(32)
    session.add(
        ImageLink(
            token_hash=_token_hash(token),
            job_id=job_id,
            expires_at=utcnow() + timedelta(seconds=ttl_seconds),
        )
    )
    return token


def linked_image(session: Session, *, token: str) -> tuple[JobImage, int]:
    """The image behind a link and the seconds it stays valid; unknown or expired: 404; the
    image deleted by retention while the link still stands: 410 image_expired."""
    link = session.get(ImageLink, _token_hash(token))
    now = utcnow()
    if link is None or link.expires_at <= now:
        raise NotFound("this image link does not exist or has expired", code="link_not_found")
    image = session.scalar(
        select(JobImage).where(JobImage.job_id == link.job_id, JobImage.role == "output")
    )
    if image is None:
        raise NotFound("this image link does not exist or has expired", code="link_not_found")
    if image.data is None:
        raise retention.expired(session.get_one(Job, link.job_id))
    return image, int((link.expires_at - now).total_seconds())


def images_response(
    session: Session,
    *,
    jobs: Sequence[Job],
    response_format: ResponseFormat,
    output_format: str | None,
    base_url: str,
    ttl_seconds: int,
) -> dict[str, Any]:
    """OpenAI's ImagesResponse for the succeeded jobs, in the order they were asked for."""
    data: list[dict[str, str]] = []
    for job in jobs:
        if job.status != JobStatus.SUCCEEDED:
            continue
        if response_format == "url":
            token = create_link(session, job_id=job.id, ttl_seconds=ttl_seconds)
            query = f"?format={output_format}" if output_format else ""
            data.append({"url": f"{base_url}/v1/images/shared/{token}{query}"})
            continue
        image = session.scalar(
            select(JobImage).where(JobImage.job_id == job.id, JobImage.role == "output")
        )
        assert image is not None  # a succeeded job has its image
        if image.data is None:  # deleted by retention (never for jobs just made)
            raise retention.expired(job)
        payload, _ = in_format(image.data, image.content_type, output_format or None)
        data.append({"b64_json": base64.b64encode(payload).decode()})
    return {"created": int(time.time()), "data": data}
