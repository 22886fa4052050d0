"""Long runs of the cluster scenario, one table for all of them:

    python -m tests.cluster --runs 20 --seed 100          # seeds 100..119, leases shortened to 3 s
    python -m tests.cluster --runs 10 --default-timing    # the shipped timings (lease TTL 10 s)
    python -m tests.cluster --scenario partitions --runs 10   # peer links cut, held, reset, slowed

Run from the repository root with the project installed; PostgreSQL is the local server when it
answers, else a throwaway one (tests/support/postgres.py). A failed run's folder (member and handler
logs, histories) is kept and named at the end; `--keep` keeps them all. Exit code 1 when any run found
a violation or failed an expectation.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from tests.cluster.partitions import peer_partitions
from tests.cluster.scenarios import Settings, cluster_life
from tests.faults.__main__ import print_summary
from tests.support.history import CheckResult
from tests.support.postgres import test_server


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="runs (seeds SEED, SEED+1, ...)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--default-timing", action="store_true", help="the shipped lease and member TTLs")
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="life",
        help="life: kill -9, pause, leave and join; partitions: peer links and isolation",
    )
    parser.add_argument("--keep", action="store_true", help="keep every run's folder, not only failed ones")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


SCENARIOS = {"life": cluster_life, "partitions": peer_partitions}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(fast_timing=not args.default_timing)
    results: list[CheckResult] = []
    failures: list[str] = []
    started = time.monotonic()
    with test_server() as pg:
        for seed in range(args.seed, args.seed + args.runs):
            workdir = Path(tempfile.mkdtemp(prefix=f"cos-cluster-{seed}-"))
            began = time.monotonic()
            try:
                outcome = SCENARIOS[args.scenario](seed, workdir, pg, settings)
            except Exception:
                failures.append(f"seed {seed} crashed ({workdir}):\n{traceback.format_exc()}")
                continue
            results.append(outcome.result)
            verdict = "ok" if outcome.ok else "FAILED"
            print(
                f"seed {seed}: {verdict}, {outcome.result.operations} calls, {time.monotonic() - began:.0f}s",
                flush=True,
            )
            started_at = outcome.faults[0][0] if outcome.faults else 0.0
            timeline = [f"{moment - started_at:7.2f}s {what}" for moment, what in outcome.faults]
            # The faults and what followed them, with times: each takeover can be read off here.
            print("  " + "\n  ".join(timeline), flush=True)
            if not outcome.ok:
                details = [str(v) for v in outcome.result.violations[:20]] + outcome.problems + timeline
                failures.append(f"{outcome.result.run} ({workdir}):\n  " + "\n  ".join(details))
            elif not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    return print_summary(results, failures, started)


if __name__ == "__main__":
    sys.exit(main())
