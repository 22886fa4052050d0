"""Decision D5: one mapping from failures to HTTP statuses, and bodies that are always valid JSON."""

from __future__ import annotations

import json

import pytest

from chiefofstate.api.http_errors import failure_response, http_status, rejection_response
from chiefofstate.core.errors import Code, CosError, Internal, InvalidArgument, NotFound


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (Code.INVALID_ARGUMENT, 400),
        (Code.NOT_FOUND, 404),
        (Code.ALREADY_EXISTS, 409),
        (Code.ABORTED, 409),
        (Code.FAILED_PRECONDITION, 412),
        (Code.RESOURCE_EXHAUSTED, 429),
        (Code.UNAVAILABLE, 503),
        (Code.DEADLINE_EXCEEDED, 504),
        (Code.INTERNAL, 500),
        (Code.UNKNOWN, 500),
        (Code.OUT_OF_RANGE, 500),
        (Code.PERMISSION_DENIED, 500),
        (Code.UNIMPLEMENTED, 500),
    ],
)
def test_codes_map_to_the_statuses_of_decision_d5(code: Code, status: int) -> None:
    assert http_status(code) == status


def test_a_failure_body_carries_the_message_and_the_code_name_as_valid_json() -> None:
    # upstream escapes only quotes and newlines; backslashes and control characters broke its JSON
    nasty = 'account "a\\b" \t\x01 does not exist\n'
    response = failure_response(CosError(nasty, code=Code.FAILED_PRECONDITION))
    assert response.status_code == 412
    assert json.loads(response.body) == {"error": nasty, "code": "FAILED_PRECONDITION"}


def test_scala_requirement_prefixes_are_removed_and_unexpected_exceptions_are_internal() -> None:
    response = failure_response(InvalidArgument("requirement failed: amount must be positive"))
    assert json.loads(response.body) == {"error": "amount must be positive", "code": "INVALID_ARGUMENT"}
    boom = failure_response(RuntimeError("boom"))
    assert boom.status_code == 500 and json.loads(boom.body) == {"error": "boom", "code": "INTERNAL"}
    assert json.loads(failure_response(Internal("")).body)["error"] == "INTERNAL"


def test_an_empty_description_falls_back_to_the_code_name() -> None:
    response = failure_response(NotFound(""))
    assert response.status_code == 404
    assert json.loads(response.body) == {"error": "NOT_FOUND", "code": "NOT_FOUND"}


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "INVALID_ARGUMENT"), (404, "NOT_FOUND"), (405, "UNIMPLEMENTED"), (413, "RESOURCE_EXHAUSTED"),
     (415, "INVALID_ARGUMENT")],
)  # fmt: skip
def test_rejections_by_the_http_layer_keep_their_http_status(status: int, code: str) -> None:
    response = rejection_response(status, "why", headers={"Allow": "GET"} if status == 405 else None)
    assert response.status_code == status
    assert json.loads(response.body) == {"error": "why", "code": code}
    if status == 405:
        assert response.headers["allow"] == "GET"
