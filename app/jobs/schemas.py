"""The job request (the contract's field table) and the Job as clients see it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Protocol, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from app.billing.rules import Cost
from app.core.errors import FluxgateError, InvalidParameter
from app.core.money import format_usd
from app.core.text import parse_json
from app.jobs.models import Job, JobStatus
from app.jobs.timings import Timings
from app.upstream import catalog

MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

Side = Annotated[
    int, Field(ge=catalog.MIN_SIDE, le=catalog.MAX_SIDE, multiple_of=catalog.SIDE_MULTIPLE)
]


class JobCreate(BaseModel):
    """Body of ``POST /v1/jobs`` and ``POST /v1/quote`` (JSON, or multipart with the same names)."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"model": "flux-2-klein-4b", "prompt": "a lighthouse at dusk, oil painting"},
                {
                    "model": "flux-2-dev",
                    "prompt": "isometric city block, soft light",
                    "width": 512,
                    "height": 512,
                    "steps": 25,
                    "seed": 7,
                    "metadata": {"order": "42"},
                },
            ]
        },
    )

    model: str = Field(
        default=catalog.DEFAULT_MODEL, description="flux-2-klein-4b, flux-2-klein-9b or flux-2-dev"
    )
    prompt: str = Field(
        min_length=1,
        description="1..4096 characters (FLUXGATE_PROMPT_MAX_CHARS), not only whitespace",
    )
    width: Side = catalog.DEFAULT_WIDTH
    height: Side = catalog.DEFAULT_HEIGHT
    seed: Annotated[int, Field(ge=0, le=catalog.MAX_SEED)] | None = None
    guidance: Annotated[float, Field(gt=0, le=catalog.MAX_GUIDANCE)] | None = None
    steps: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="flux-2-dev only: 1..50 (default 25); klein is fixed at 4"
    )
    webhook_url: str | None = Field(
        default=None,
        description=(
            "https URL (http only inside FLUXGATE_WEBHOOK_ALLOWED_NETWORKS) to receive a signed "
            "job.succeeded, job.failed or job.canceled event; it must resolve to public "
            "addresses"
        ),
    )  # checked in service.parse_submission: the rules need the settings and DNS
    metadata: dict[str, str] = Field(default_factory=dict, description="at most 16 string values")
    input_images: list[str] | None = Field(
        default=None,
        max_length=catalog.MAX_INPUT_IMAGES,
        description=(
            "JSON only: up to 4 base64 PNG, JPEG or WebP images (a data: URL prefix is fine); "
            "multipart sends files input_image_0..input_image_3 instead"
        ),
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return catalog.model_id(value)

    @field_validator("prompt")
    @classmethod
    def _visible_prompt(cls, value: str) -> str:
        # Workers AI refuses a blank prompt (5004) after the call was queued and rate-counted.
        if not value.strip():
            raise ValueError("must contain more than whitespace")
        return value

    @field_validator("metadata")
    @classmethod
    def _flat_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} keys")
        for key, item in value.items():
            if not key or len(key) > MAX_METADATA_KEY_CHARS:
                raise ValueError(f"keys must be 1..{MAX_METADATA_KEY_CHARS} characters")
            if len(item) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"values must be at most {MAX_METADATA_VALUE_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _steps_for_model(self) -> Self:
        spec = catalog.MODELS[self.model]
        if self.steps is None:
            self.steps = spec.default_steps
        elif not spec.steps_configurable and self.steps != spec.default_steps:
            raise _StepsError(
                f"{spec.id} runs a fixed {spec.default_steps} steps; omit steps or send "
                f"{spec.default_steps}"
            )
        elif self.steps > spec.max_steps:
            raise _StepsError(f"{spec.id} takes 1..{spec.max_steps} steps")
        return self

    @property
    def resolved_steps(self) -> int:
        assert self.steps is not None  # set by _steps_for_model
        return self.steps


class _StepsError(ValueError):
    pass


_FORM_JSON_FIELDS = ("metadata",)


def parse_job_create(data: Any, *, from_form: bool, prompt_max_chars: int) -> JobCreate:
    """Validate a request body; the first problem becomes a 422 naming its ``param``.

    JSON is validated strictly (``"1024"`` is not a width, ``true`` is not a seed); form fields
    are text by nature, so numbers are parsed from it.
    """
    if not isinstance(data, dict):
        raise FluxgateError("the body must be a JSON object", code="invalid_json")
    if from_form:
        data = dict(data)
        for name in _FORM_JSON_FIELDS:
            if isinstance(data.get(name), str):
                try:
                    data[name] = parse_json(data[name])
                except FluxgateError as error:
                    # Text and repeated keys keep their own codes; bad JSON is a bad value.
                    code = error.code if isinstance(error, InvalidParameter) else None
                    raise InvalidParameter(
                        f"{name} must be a JSON object: {error.message}", code=code, param=name
                    ) from None
    try:
        request = JobCreate.model_validate(data, strict=not from_form)
    except ValidationError as error:
        raise _to_invalid_parameter(error) from None
    if len(request.prompt) > prompt_max_chars:
        raise InvalidParameter(
            f"prompt must be at most {prompt_max_chars} characters", param="prompt"
        )
    return request


def _to_invalid_parameter(error: ValidationError) -> InvalidParameter:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    param = loc[0] if loc else None
    kind = first["type"]
    ctx = first.get("ctx") or {}
    if isinstance(ctx.get("error"), _StepsError):
        return InvalidParameter(str(ctx["error"]), param="steps")
    message = first["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return InvalidParameter(f"{param} is required", param=param, code="missing_parameter")
    if kind == "extra_forbidden":
        return InvalidParameter(f"unknown parameter {param}", param=param, code="unknown_parameter")
    where = ".".join(loc) if loc else "body"
    return InvalidParameter(f"{where}: {message}", param=param)


# ---- responses --------------------------------------------------------------------------


class JobParams(BaseModel):
    prompt: str
    width: int
    height: int
    seed: int | None
    guidance: float | None
    steps: int
    input_images: int


class JobCost(BaseModel):
    currency: Literal["USD"] = "USD"
    estimated: str = Field(examples=["0.001148"])
    charged: str | None = Field(default=None, examples=[None])
    input_tiles: int
    output_tiles: int
    upstream_neurons: str | None = None


class JobErrorOut(BaseModel):
    code: str
    message: str
    upstream_code: int | None = None


class JobOutput(BaseModel):
    image_url: str = Field(
        description="the image's URL: absolute under FLUXGATE_PUBLIC_URL when it is set, else "
        "relative to the gateway",
        examples=["/v1/jobs/job_01JZ3Q4W8R5T6Y7U8I9O0P1A2S/image"],
    )
    content_type: str
    width: int
    height: int
    bytes: int
    sha256: str


class JobTimings(BaseModel):
    """Where the job's time went, in milliseconds: waiting for a worker (and, for a retried
    job, between attempts), in Workers AI, and in the gateway itself. Null until known:
    ``queue_ms`` once the job started, the rest once it ended (all three for a retried job)."""

    queue_ms: int | None
    upstream_ms: int | None
    overhead_ms: int | None


# Within this many places of the front of the queue, positions are exact (see
# ``JobOut.queue_position`` and app/jobs/service.py, ``queue_positions``).
EXACT_POSITIONS = 1000


class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    model: str
    params: JobParams
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    queue_position: int | None = Field(
        description="while the job is queued: its place among every key's queued jobs in the "
        "order they were submitted (1: the oldest still waiting; a retried job keeps its "
        "place), counting the jobs ahead that are still waiting or being submitted. A job "
        "ahead that left the queue out of turn (canceled, or started early) stops counting "
        f"at once within {EXACT_POSITIONS} places of the front, further back once the front "
        "has passed it, so there the position can exceed the jobs ahead (as it can by a "
        "submission that was refused after it took its place). Positions shown at "
        "one moment are distinct. It is not the order jobs start in: each free slot starts a "
        "job of the key with the fewest jobs running, then waiting (fair share). Null unless "
        "queued",
        examples=[3],
    )
    attempts: int
    error: JobErrorOut | None = Field(description="why the job failed; null unless it did")
    last_error: JobErrorOut | None = Field(
        description="why the job's last attempt failed, while the job is queued for (or "
        "running) another; null once it has ended (then `error` says why it failed) and while "
        "no attempt has failed"
    )
    next_attempt_at: datetime | None = Field(
        description="when a queued job whose last attempt failed is tried again (it can be "
        "canceled until then); null otherwise, and when it runs as soon as a worker is free"
    )
    cost: JobCost
    output: JobOutput | None
    metadata: dict[str, str]
    webhook_url: str | None
    timings: JobTimings
    request_id: str | None = Field(
        description="the X-Request-ID of the request that submitted the job (the client's, "
        "or the one the gateway made); its log lines carry it",
        examples=["3f2b8c0e9a7d4e51b6c2d1f0a9e8b7c6"],
    )


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    next_cursor: str | None


class AdminJobOut(JobOut):
    """A job as admins see it: the Job, and the key it belongs to."""

    key_id: str


class AdminJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdminJobOut]
    next_cursor: str | None


def cost_out(cost: Cost, *, charged_nanos: int | None = None) -> JobCost:
    return JobCost(
        estimated=format_usd(cost.total_nanos),
        charged=None if charged_nanos is None else format_usd(charged_nanos),
        input_tiles=cost.input_tiles,
        output_tiles=cost.output_tiles,
    )


def image_url(job_id: str, *, public_url: str | None) -> str:
    """A job's image link: absolute under ``public_url`` (the operator's FLUXGATE_PUBLIC_URL,
    for webhook receivers and clients behind other hosts), else relative to the gateway."""
    return f"{public_url or ''}/v1/jobs/{job_id}/image"


def _error_out(job: Job) -> JobErrorOut:
    return JobErrorOut(
        code=job.error_code or "",
        message=job.error_message or "",
        upstream_code=job.error_upstream_code,
    )


class OutputImage(Protocol):
    """What a Job's ``output`` block shows of its image: its stored row, or the worker's check
    of the bytes it is storing (app/core/images.py ``ImageInfo``)."""

    @property
    def content_type(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def sha256(self) -> str: ...


def job_out(
    job: Job,
    image: OutputImage | None,
    position: int | None,
    timings: Timings,
    *,
    public_url: str | None,
) -> JobOut:
    status = JobStatus(job.status)
    # A job canceled between attempts keeps its last attempt's error for operators (the
    # dashboard), but did not fail: its ``error`` is null.
    failed = status == JobStatus.FAILED and job.error_code is not None
    # A job still on its way keeps the error of its last failed attempt (execution.py records
    # it with the retry): the contract's ``error`` stays null until the job has failed.
    retrying = not status.is_final and job.error_code is not None
    return JobOut(
        id=job.id,
        status=status.value,
        model=job.model,
        params=JobParams(
            prompt=job.prompt,
            width=job.width,
            height=job.height,
            seed=job.seed,
            guidance=job.guidance,
            steps=job.steps,
            input_images=job.input_image_count,
        ),
        created_at=job.created_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        queue_position=position,
        attempts=job.attempts,
        error=_error_out(job) if failed else None,
        last_error=_error_out(job) if retrying else None,
        next_attempt_at=job.not_before if status == JobStatus.QUEUED and retrying else None,
        cost=JobCost(
            estimated=format_usd(job.estimated_nanos),
            charged=None if job.charged_nanos is None else format_usd(job.charged_nanos),
            input_tiles=job.input_tiles,
            output_tiles=job.output_tiles,
            upstream_neurons=job.upstream_neurons,
        ),
        output=JobOutput(
            image_url=image_url(job.id, public_url=public_url),
            content_type=image.content_type,
            width=image.width,
            height=image.height,
            bytes=image.size_bytes,
            sha256=image.sha256,
        )
        if image is not None
        else None,
        metadata=job.metadata_ or {},
        webhook_url=job.webhook_url,
        timings=JobTimings(
            queue_ms=timings.queue_ms,
            upstream_ms=timings.upstream_ms,
            overhead_ms=timings.overhead_ms,
        ),
        request_id=job.request_id,
    )
