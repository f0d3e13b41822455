"""One error hierarchy; the HTTP layer maps it to the contract's envelope in one place."""

from __future__ import annotations


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


class InvalidRequest(FluxgateError):
    status_code = 400
    code = "invalid_request"


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
