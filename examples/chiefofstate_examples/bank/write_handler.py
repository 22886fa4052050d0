"""`python -m chiefofstate_examples.bank.write_handler [--host 127.0.0.1] [--port 50051]`: the bank's
write handler (handlers.py) served over gRPC, upstream's `chief_of_state.v1.WriteSideHandlerService`, with
the gRPC health service and server reflection (through which `cos` decodes the bank's events, docs/cli.md).

Once it accepts calls it prints one line, `bank write handler (grpc) listening on HOST:PORT`; `--port 0`
picks a free port, which the line reports. SIGTERM or SIGINT stops it (exit 0); a port it cannot bind
exits 1, a bad BANK_HANDLER_* variable (write_hooks.py) exits 2. http_write_handler.py serves the same
handler over HTTP.

Refused commands keep their gRPC status on the way to the Chief of State caller; insufficient funds is
`FAILED_PRECONDITION` with a `google.rpc.ErrorInfo` (reason `INSUFFICIENT_FUNDS`, domain `bank.example`,
metadata `balance` and `requested`) in the `grpc-status-details-bin` trailer.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Final, Literal

from starlette.middleware import Middleware

from chiefofstate.config.tracing import tracing_settings
from chiefofstate.sdk import serve
from chiefofstate.telemetry.tracing import Tracing
from chiefofstate_examples.bank.write_hooks import (
    NO_STATE_AMOUNT,
    WRONG_STATE_TYPE_AMOUNT,
    FaultInjection,
    HookedBank,
    HttpOnlyFaults,
)

__all__ = ["NO_STATE_AMOUNT", "WRONG_STATE_TYPE_AMOUNT", "FaultInjection", "main", "run"]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 50051


def run(argv: Sequence[str] | None, *, protocol: Literal["grpc", "http"], default_port: int) -> int:
    """The command line of both write handler programs; returns the exit code."""
    program = "write_handler" if protocol == "grpc" else "http_write_handler"
    parser = argparse.ArgumentParser(
        prog=f"python -m chiefofstate_examples.bank.{program}",
        description=f"Bank example write handler for Chief of State ({protocol} write-side protocol).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=default_port, help=f"port, 0 = any free one (default {default_port})"
    )
    args = parser.parse_args(argv)
    try:
        faults = FaultInjection.from_environment()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    middleware = [Middleware(HttpOnlyFaults)] if protocol == "http" and faults.magic_deposit_amounts else []
    tracing = Tracing(tracing_settings(os.environ, "bank-write-handler"))
    try:
        serve(
            HookedBank(faults, tracing),
            host=args.host,
            port=args.port,
            protocol=protocol,
            http_middleware=middleware,
            name="bank write handler",
        )
    except SystemExit as exit_:  # serve exits 1, with the reason on stderr, when it cannot bind
        return int(exit_.code or 0)
    finally:
        tracing.shutdown()  # sends the spans still buffered
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m chiefofstate_examples.bank.write_handler`."""
    return run(argv, protocol="grpc", default_port=DEFAULT_PORT)


if __name__ == "__main__":
    sys.exit(main())
