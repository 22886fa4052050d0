"""`python -m chiefofstate_examples.sdk_bank`: serve the SDK bank's write handler (or its read handler)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from chiefofstate.sdk import serve
from chiefofstate_examples.sdk_bank.handlers import Balances, Bank


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chiefofstate_examples.sdk_bank")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051, help="0 = any free port")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--read-side", action="store_true", help="serve the Balances read handler")
    args = parser.parse_args(argv)
    serve(Balances() if args.read_side else Bank(), host=args.host, port=args.port, protocol=args.protocol)


if __name__ == "__main__":
    main()
