"""Long runs of the single-node fault scenarios, one table for all of them:

    python -m tests.faults --runs 20 --seed 100                 # every scenario, seeds 100..119
    python -m tests.faults --runs 5 --scenario kill-node/sqlite --duration 60

Run from the repository root with the project installed. PostgreSQL is the local server when it answers,
else a throwaway one (tests/support/postgres.py, COS_TEST_PG). Each run's files (node and handler logs,
the histories) are kept in a folder named at the end when the run failed, and removed otherwise
(`--keep` keeps them all). Exit code 1 when any run found a violation or failed an expectation.
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

from tests.faults.catalog import SCENARIOS
from tests.faults.scenarios import Outcome, Settings
from tests.support.history import CheckResult, format_table
from tests.support.postgres import test_server


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [scenario.name for scenario in SCENARIOS]
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="runs of each scenario (seeds SEED, SEED+1, ...)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--scenario",
        action="append",
        choices=names,
        help="run only this scenario (repeatable; default: all)",
    )
    defaults = Settings()
    parser.add_argument(
        "--duration", type=float, default=defaults.duration_s, help="seconds of faults per run"
    )
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--entities", type=int, default=defaults.entities)
    parser.add_argument(
        "--deadline", type=float, default=defaults.deadline_s, help="client deadline, seconds"
    )
    parser.add_argument("--keep", action="store_true", help="keep every run's folder, not only failed ones")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        duration_s=args.duration,
        concurrency=args.concurrency,
        entities=args.entities,
        deadline_s=args.deadline,
    )
    chosen = [s for s in SCENARIOS if args.scenario is None or s.name in args.scenario]
    results: list[CheckResult] = []
    failures: list[str] = []
    started = time.monotonic()
    with test_server() as pg:
        for run in range(args.runs):
            seed = args.seed + run
            for scenario in chosen:
                workdir = Path(
                    tempfile.mkdtemp(prefix=f"cos-faults-{scenario.name.replace('/', '-')}-{seed}-")
                )
                began = time.monotonic()
                try:
                    outcome: Outcome | None = scenario.run(seed, workdir, pg, settings)
                except Exception:
                    outcome = None
                    failures.append(
                        f"{scenario.name} seed {seed} crashed ({workdir}):\n{traceback.format_exc()}"
                    )
                if outcome is not None:
                    results.append(outcome.result)
                    verdict = "ok" if outcome.ok else "FAILED"
                    print(
                        f"{scenario.name} seed {seed}: {verdict}, {outcome.result.operations} calls, "
                        f"{len(outcome.faults)} fault events, {time.monotonic() - began:.0f}s",
                        flush=True,
                    )
                    if not outcome.ok:
                        details = [str(v) for v in outcome.result.violations[:20]] + outcome.problems
                        details += [f"{moment:.2f} {what}" for moment, what in outcome.faults]
                        failures.append(f"{outcome.result.run} ({workdir}):\n  " + "\n  ".join(details))
                if outcome is not None and outcome.ok and not args.keep:
                    shutil.rmtree(workdir, ignore_errors=True)
    return print_summary(results, failures, started)


def print_summary(results: list[CheckResult], failures: list[str], started: float) -> int:
    """One table for every run checked, then each failure; the exit code of a long run."""
    print()
    if results:
        print(format_table(results))
    print(f"\n{len(results)} run(s) checked in {time.monotonic() - started:.0f}s")
    for failure in failures:
        print(f"\n{failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
