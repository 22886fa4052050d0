"""One HTTP load-generator process of benchmarks.http_vs_grpc: a closed loop of keep-alive requests on
uvloop, so that the client is not what an HTTP benchmark measures (several of these run side by side).

    python -m benchmarks.http_load_process --port P --method GET --path /v1/entities/{worker}/state \
        --out REPORT.json [--body JSON] [--concurrency 16] [--first-worker 0] [--warmup 0.5] [--duration 3]

`{worker}` in the path becomes each worker's number (from --first-worker). Writes a JSON report: calls
and failures during the warm-up and the measured window, the window's length and its latencies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import uvloop

from benchmarks.http_bench_common import KeepAliveConnection, closed_loop


async def _run(args: argparse.Namespace) -> dict[str, object]:
    connections = [KeepAliveConnection("127.0.0.1", args.port) for _ in range(args.concurrency)]
    body = args.body.encode()

    async def call(worker: int) -> object:
        path = args.path.replace("{worker}", str(args.first_worker + worker))
        status, reply = await connections[worker].request(args.method, path, body)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {reply[:200]!r}")
        return json.loads(reply)  # what any client of the API does with the answer

    try:
        warm = await closed_loop("warm-up", call, args.concurrency, args.warmup)
        measured = await closed_loop("measured", call, args.concurrency, args.duration)
    finally:
        for connection in connections:
            await connection.close()
    return {
        "warm_calls": warm.calls + warm.failures,
        "calls": measured.calls,
        "failures": measured.failures,
        "seconds": measured.seconds,
        "latencies_s": measured.latencies_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_load_process")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", required=True)
    parser.add_argument("--body", default="")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--first-worker", type=int, default=0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--out", type=Path, required=True, help="where the JSON report is written")
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(uvloop.run(_run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
