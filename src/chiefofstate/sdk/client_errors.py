"""Typed exceptions for failed Chief of State calls, each carrying the gRPC status code.

`except NotFound:` or `except CosCallError as error: error.code`; rich error details a write handler
attached (`google.rpc.Status` details, such as `google.rpc.ErrorInfo`) are in `error.details` as packed
`Any` messages, and `error.detail(ErrorInfo)` unpacks the first of a type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from grpc_status import rpc_status

M = TypeVar("M", bound=Message)


class CosCallError(Exception):
    """A call to the node failed; `code` is its gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[any_pb2.Any] = ()) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = tuple(details)

    def detail(self, message_class: type[M]) -> M | None:
        """The first rich error detail of `message_class`, unpacked; None if there is none."""
        for packed in self.details:
            message = message_class()
            if packed.Unpack(message):
                return message
        return None


class InvalidArgument(CosCallError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CosCallError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CosCallError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CosCallError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(CosCallError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(CosCallError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(CosCallError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(CosCallError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(CosCallError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(CosCallError):
    code = grpc.StatusCode.INTERNAL


class Unimplemented(CosCallError):
    code = grpc.StatusCode.UNIMPLEMENTED


_BY_CODE: Final[dict[grpc.StatusCode, type[CosCallError]]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Internal,
        Unimplemented,
    )
}


def error_for(code: grpc.StatusCode, message: str, details: Sequence[any_pb2.Any] = ()) -> CosCallError:
    """The typed exception for a status; CosCallError itself for codes without a class of their own."""
    return _BY_CODE.get(code, CosCallError)(code, message, details)


def from_rpc_error(error: grpc.RpcError) -> CosCallError:
    """The typed exception for a failed call (sync or async), rich details included."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or ""
    details: Sequence[any_pb2.Any] = ()
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type, unused-ignore]
    except ValueError:  # a trailer that disagrees with the status: keep the status itself
        status = None
    if status is not None:
        details = list(status.details)
    return error_for(code, message, details)
