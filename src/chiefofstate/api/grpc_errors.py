"""The one place where failures become gRPC statuses (SPEC.md §3.10)."""

from __future__ import annotations

import grpc
from grpc import aio

from chiefofstate.core.errors import CosError, Internal

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_REQUIREMENT_PREFIX = "requirement failed: "


def as_cos_error(error: BaseException) -> CosError:
    """Anything unexpected becomes INTERNAL with its message, as upstream does."""
    if isinstance(error, CosError):
        return error
    return Internal(str(error) or type(error).__name__)


def status_message(error: CosError) -> str:
    """The description callers see, over gRPC and HTTP alike (upstream strips Scala's require prefix)."""
    return error.message.removeprefix(_REQUIREMENT_PREFIX)


async def abort_with(context: aio.ServicerContext[object, object], error: CosError) -> None:
    message = status_message(error)
    trailing = ((STATUS_DETAILS_KEY, error.details),) if error.details else ()
    await context.abort(grpc.StatusCode[error.code.name], message, trailing_metadata=trailing)
