"""How a handler refuses: `raise Rejected(code, message, details=...)`.

The gRPC status code, the message and the rich error details (protobuf messages such as
`google.rpc.ErrorInfo`) reach the Chief of State caller unchanged when the handler is served over gRPC:
the details travel in the `grpc-status-details-bin` trailer as a packed `google.rpc.Status`. Over the HTTP
write-handler protocol the node answers every refusal with INTERNAL (the protocol has no way to carry a
status), so the code and message only reach the caller inside that error's text.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf.message import Message


class Rejected(Exception):
    """A command (or event) the handler refuses, with the gRPC status it becomes."""

    def __init__(self, code: grpc.StatusCode, message: str, *, details: Sequence[Message] = ()) -> None:
        if code is grpc.StatusCode.OK:
            raise ValueError("a rejection needs an error code, not OK")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = tuple(details)

    def __str__(self) -> str:
        return self.message
