"""`python -m chiefofstate_examples.bank.http_write_handler [--host 127.0.0.1] [--port 50052]`: the bank's
write handler (handlers.py) over upstream's HTTP write-side protocol (docs/contract.md §9); point the node
at it with `COS_WRITE_SIDE_PROTOCOL=http`. The same command line and exit codes as write_handler.py;
it announces `bank write handler (http) listening on HOST:PORT`.

A refused command is an HTTP error status with `{"error": "<message>", "code": "<gRPC code name>"}` (and
`"details"`, base64 `Any`s, when it has some). The node turns every non-200 answer into `INTERNAL` quoting
the status and the start of the body: an HTTP handler cannot choose the status the caller sees, which is
the protocol's known limitation. With `BANK_HANDLER_FAULTS=1` it also gives the wrong answers only HTTP can
(write_hooks.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Final

from chiefofstate_examples.bank.write_handler import run
from chiefofstate_examples.bank.write_hooks import (
    EVENT_FAILURE_AMOUNT,
    MALFORMED_JSON_AMOUNT,
    SERVICE_UNAVAILABLE_AMOUNT,
)

__all__ = ["EVENT_FAILURE_AMOUNT", "MALFORMED_JSON_AMOUNT", "SERVICE_UNAVAILABLE_AMOUNT", "main"]

DEFAULT_PORT: Final = 50052


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m chiefofstate_examples.bank.http_write_handler`."""
    return run(argv, protocol="http", default_port=DEFAULT_PORT)


if __name__ == "__main__":
    sys.exit(main())
