"""The Python developer kit for Chief of State: write and read handlers as plain Python classes, served
over upstream's published gRPC or HTTP handler protocols, and a typed client. docs/python.md is the guide.
"""

from chiefofstate.sdk.channels import Tls
from chiefofstate.sdk.client import CosClient, Subscription, Update
from chiefofstate.sdk.client_errors import (
    AlreadyExists,
    CosCallError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from chiefofstate.sdk.client_rules import NO_RETRIES, RetryPolicy
from chiefofstate.sdk.headers_context import call_headers
from chiefofstate.sdk.read import ReadHandler, handles
from chiefofstate.sdk.rejected import Rejected
from chiefofstate.sdk.serving import RunningHandler, serve, start
from chiefofstate.sdk.sync_client import SyncCosClient, SyncSubscription
from chiefofstate.sdk.write import WriteHandler, command, event

__all__ = [
    "NO_RETRIES",
    "AlreadyExists",
    "CosCallError",
    "CosClient",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ReadHandler",
    "Rejected",
    "ResourceExhausted",
    "RetryPolicy",
    "RunningHandler",
    "Subscription",
    "SyncCosClient",
    "SyncSubscription",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Update",
    "WriteHandler",
    "call_headers",
    "command",
    "event",
    "handles",
    "serve",
    "start",
]
