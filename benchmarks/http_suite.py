"""The `http` suite of `python -m benchmarks`: HTTP against gRPC for the client API
(benchmarks.http_vs_grpc) and for write handlers (benchmarks.http_write_handler), each side by side in
interleaved rounds, printed after the main tables (docs/performance.md, "HTTP")."""

from __future__ import annotations

import asyncio

from benchmarks import http_vs_grpc, http_write_handler
from benchmarks.suite import progress


def measure(duration_s: float, rounds: int, concurrency: int = 32) -> str:
    """Both comparisons' reports; a client without headroom is marked INVALID in its report."""
    progress(f"http: HTTP against gRPC API, {rounds} rounds of {duration_s:g} s per workload")
    api = asyncio.run(http_vs_grpc.run(duration_s, concurrency, rounds))
    progress(f"http: HTTP against gRPC write handler, {rounds} rounds of {duration_s:g} s per workload")
    handlers = asyncio.run(http_write_handler.run(duration_s, concurrency, rounds))
    return f"## HTTP\n\n{api.report()}\n\n{handlers.report()}"
