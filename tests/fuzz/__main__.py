"""Long fuzz runs: `python -m tests.fuzz --cases 10000` (docs/testing.md, "Fuzzing")."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.fuzz.runner import Budget, run_api_cases, run_config_cases
from tests.fuzz.target import running_target


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000, help="cases in all (default 10000)")
    parser.add_argument("--keep", action="store_true", help="keep the node's folder (logs, journal)")
    arguments = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="cos-fuzz-"))
    budget = Budget.scaled(arguments.cases)
    started = time.monotonic()
    try:
        with running_target(folder) as target:
            ledger = run_api_cases(target, budget)
            run_config_cases(target, budget, folder / "configs")
    except AssertionError as failure:
        print(f"FAILED: {failure}\nlogs kept in {folder}", file=sys.stderr)
        return 1
    print(
        f"{budget.grpc} gRPC, {budget.http} HTTP, {2 * budget.configs} config and {budget.config_nodes} "
        f"node-config cases in {time.monotonic() - started:.0f}s: 0 crashes, 0 undocumented answers, "
        f"{len(ledger.revisions)} entities written, none by a refused command"
    )
    if not arguments.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
