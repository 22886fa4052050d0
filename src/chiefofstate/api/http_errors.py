"""The one place where failures become HTTP statuses and JSON error bodies (decision D5).

Upstream answers every failed call with `500` and a hand-escaped `{"error": …}` (docs/contract.md §8.3,
§14 #6). Here a failure keeps its meaning: the status follows the gRPC code it would have had, and
the body is always valid JSON, `{"error": "<message>", "code": "<GRPC_CODE_NAME>"}`.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from chiefofstate.core.errors import Code, HeadersTooLarge, as_cos_error, status_message

# Decision D5; every code not listed is 500.
_HTTP_STATUS_OF_CODE = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.ABORTED: 409,
    Code.FAILED_PRECONDITION: 412,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}

# Failures the HTTP layer itself detects, before any command runs: the status is HTTP's own,
# the `code` names the gRPC code the same mistake gets over gRPC.
_CODE_OF_HTTP_STATUS = {
    400: Code.INVALID_ARGUMENT,
    404: Code.NOT_FOUND,
    405: Code.UNIMPLEMENTED,
    413: Code.RESOURCE_EXHAUSTED,
    415: Code.INVALID_ARGUMENT,
}


def http_status(code: Code) -> int:
    return _HTTP_STATUS_OF_CODE.get(code, 500)


def error_body(code: Code, message: str) -> dict[str, str]:
    # An empty description (GetState's NOT_FOUND, decision D12) would leave `error` blank.
    return {"error": message or code.name, "code": code.name}


def failure_response(failure: BaseException) -> JSONResponse:
    """A failed command or state call: status from its code, message as over gRPC."""
    error = as_cos_error(failure)
    # 431 says which part of the request is too large; the code is INVALID_ARGUMENT, as over gRPC.
    status = 431 if isinstance(error, HeadersTooLarge) else http_status(error.code)
    return JSONResponse(error_body(error.code, status_message(error)), status_code=status)


def rejection_response(
    status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A request refused by the HTTP layer (bad JSON, wrong content type, route, method or size)."""
    code = _CODE_OF_HTTP_STATUS.get(status_code, Code.INTERNAL if status_code >= 500 else Code.UNKNOWN)
    return JSONResponse(error_body(code, message), status_code=status_code, headers=headers)
