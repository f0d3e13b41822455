"""One error hierarchy; the HTTP layer maps it to the contract's envelope in one place. The
envelope's models and the description of each status are here too, for the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class FluxgateError(Exception):
    status_code = 400
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"code": self.code, "message": self.message, "param": self.param}}


class InvalidParameter(FluxgateError):
    status_code = 422
    code = "invalid_parameter"


class Unauthorized(FluxgateError):
    status_code = 401
    code = "unauthorized"


class Forbidden(FluxgateError):
    status_code = 403
    code = "forbidden"


class NotFound(FluxgateError):
    status_code = 404
    code = "not_found"


class Conflict(FluxgateError):
    status_code = 409
    code = "conflict"


class Gone(FluxgateError):
    """It existed and was deleted on purpose (an image past IMAGE_RETENTION_DAYS)."""

    status_code = 410
    code = "gone"


class PayloadTooLarge(FluxgateError):
    status_code = 413
    code = "request_too_large"


class UnsupportedMediaType(FluxgateError):
    status_code = 415
    code = "unsupported_media_type"


class DependencyUnavailable(FluxgateError):
    status_code = 503
    code = "dependency_unavailable"


class UpstreamFailed(FluxgateError):
    status_code = 502
    code = "upstream_failed"


class WaitTimeout(FluxgateError):
    status_code = 504
    code = "timeout"


# ---- the envelope, as the OpenAPI description shows it ----------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="snake_case, stable: what to branch on")
    message: str = Field(description="a sentence for people")
    param: str | None = Field(description="the field, parameter or header at fault")


class ErrorBody(BaseModel):
    """Every error Fluxgate answers, outside the OpenAI-compatible routes."""

    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """Errors of the OpenAI-compatible routes, in OpenAI's shape."""

    error: OpenAIErrorDetail


DESCRIPTIONS = {
    400: "The request is malformed (e.g. the body is not valid JSON)",
    401: "No API key, or one that is not valid or has been revoked",
    402: "The key's budget cannot hold this job's cost",
    403: "This needs an admin key",
    404: "Nothing with this id, or not the caller's",
    408: "The request was not received in time",
    409: "It conflicts with the resource's state",
    410: "The image was deleted by retention (`image_expired`); the job and its charge remain",
    413: "The request, or an image in it, is too large",
    415: "The body, or an image in it, has a type that is not accepted",
    422: "A field, parameter or header broke a rule; `param` names it",
    429: "Over the key's limits; `Retry-After` says when to try again",
    431: "The request's headers are too large or too many",
    502: "Every job ended in an upstream failure",
    503: "A dependency is down or busy; try again shortly",
    504: "The jobs did not finish in time; they go on as ordinary jobs",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """What a route declares for the statuses only it can answer."""
    return {status: {"description": DESCRIPTIONS[status]} for status in statuses}
