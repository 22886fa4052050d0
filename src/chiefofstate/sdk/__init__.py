"""The Python developer kit for Chief of State: write and read handlers as plain Python classes, served
over upstream's published gRPC or HTTP handler protocols, and a typed client. docs/python.md is the guide.
"""

from chiefofstate.sdk.read import ReadHandler, handles
from chiefofstate.sdk.rejected import Rejected
from chiefofstate.sdk.serving import RunningHandler, serve, start
from chiefofstate.sdk.write import WriteHandler, command, event

__all__ = [
    "ReadHandler",
    "Rejected",
    "RunningHandler",
    "WriteHandler",
    "command",
    "event",
    "handles",
    "serve",
    "start",
]
