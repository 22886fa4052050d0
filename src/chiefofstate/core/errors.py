"""Typed failures of the command path, each carrying the gRPC status it becomes.

Adapters translate library exceptions (grpc, asyncpg, sqlite3, httpx) into these at the edge,
so nothing above an adapter ever sees a library's exception type.
"""

from __future__ import annotations

import copy
from enum import IntEnum


class Code(IntEnum):
    """The canonical gRPC status codes, by number (kept here so core needs no grpc import)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class CosError(Exception):
    """A failure that reaches the caller as a status with a message."""

    code: Code = Code.INTERNAL
    # What callers are told instead of `message`, when the message is for the node's log only (where
    # the database is, what it answered): see `status_message`.
    client_message: str | None = None

    def __init__(
        self,
        message: str = "",
        *,
        code: Code | None = None,
        details: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        # serialized google.rpc.Status, sent back as the grpc-status-details-bin trailer
        self.details = details

    def __str__(self) -> str:
        return self.message


class InvalidArgument(CosError):
    code = Code.INVALID_ARGUMENT


class HeadersTooLarge(InvalidArgument):
    """Request headers too large to carry on: the caller's mistake, answered 431 over HTTP."""


class NotFound(CosError):
    code = Code.NOT_FOUND


class DeadlineExceeded(CosError):
    code = Code.DEADLINE_EXCEEDED


class Unavailable(CosError):
    code = Code.UNAVAILABLE


class ResourceExhausted(CosError):
    code = Code.RESOURCE_EXHAUSTED


class AlreadyExists(CosError):
    code = Code.ALREADY_EXISTS


class Internal(CosError):
    code = Code.INTERNAL


class HandlerFailed(CosError):
    """The write handler answered with a status of its own; it is passed through unchanged."""


class SequenceConflict(CosError):
    """Another writer already stored this (entity, revision): the append is refused, never acknowledged."""

    code = Code.ABORTED


class StoreUnavailable(Unavailable):
    """The journal could not be reached; nothing was written. The message, for the log, says where
    and why; callers are only told that the store is unavailable."""

    client_message = "the store is unavailable"


class StoreFull(StoreUnavailable):
    """The store's disk is full; nothing was written. Callers are told so (it names no file or
    server), as the one outage they cannot end by retrying: an operator frees space."""

    client_message = "the store's disk is full; nothing was written"


class StoreFailed(Internal):
    """The store refused an operation for a reason other than an outage. The message, for the log,
    quotes the database's answer; callers get a summary."""

    client_message = "the store failed to complete the request; the node's log has the details"


class ShardNotHere(Unavailable):
    """This node may not serve the shard now (it does not hold its lease, or is handing it over).
    Nothing was written: the caller re-routes the request to the shard's owner (docs/cluster.md)."""

    def __init__(self, shard: int, message: str = "") -> None:
        super().__init__(message or f"shard {shard} is not served by this node")
        self.shard = shard


class LeaseLost(Unavailable):
    """The append carried a lease token that is no longer its shard's current one: another node has
    taken the shard over, and nothing of the request was written. A caller the node cannot re-route to
    the shard's new owner sees UNAVAILABLE, and may retry."""


class MembershipLost(Unavailable):
    """This node's membership row is gone or marked as left: the other nodes no longer count it, so it
    must stop acting on what it owned and join again as a new member."""


class MigrationError(Exception):
    """The schema cannot be brought to the version this release needs; the node must not start, and
    `cos` says so in one line and exits 2 (D9)."""


class ConfigError(Exception):
    """Invalid configuration: one line naming the variable, and the node exits with code 2."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def copy_for_another_caller(exc: Exception) -> Exception:
    """Each waiting caller raises its own copy: raising one object in many tasks would stack every
    caller's traceback onto it (keeping their frames alive). The copy points at the original as its cause."""
    try:
        duplicate = copy.copy(exc)
    except Exception:
        return exc
    duplicate.__cause__ = exc
    return duplicate


# Upstream strips the prefix Scala's require() adds before a message reaches the caller.
_REQUIREMENT_PREFIX = "requirement failed: "


def as_cos_error(error: BaseException) -> CosError:
    """Anything unexpected becomes INTERNAL with its message, as upstream does."""
    if isinstance(error, CosError):
        return error
    return Internal(str(error) or type(error).__name__)


def status_message(error: CosError) -> str:
    """The description callers see, over gRPC and HTTP alike (upstream strips Scala's require prefix)."""
    if error.client_message is not None:
        return error.client_message
    return error.message.removeprefix(_REQUIREMENT_PREFIX)
