"""Side-by-side ratios of two builds from `python -m benchmarks --json` reports:

    python -m benchmarks.compare --before a1.json a2.json --after b1.json b2.json

Each report is one run with its own floor and echo server, so each run's ratios (node ÷ reference,
measured in the same run) are comparable across builds even when the machine's speed drifted between
runs. The table gives every run's ratios and the median per build; the difference of medians is what
a change moved.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# (label, node workload, reference system, reference workload)
RATIOS = (
    ("hot ÷ floor", "ProcessCommand hot", "floor", "ProcessCommand"),
    ("new ÷ floor", "ProcessCommand new", "floor", "ProcessCommand"),
    ("GetState cached ÷ echo", "GetState cached", "echo", "GetState"),
)


def _cell(report: dict[str, Any], system_prefix: str, workload: str, concurrency: int) -> dict[str, Any]:
    for cell in report["cells"]:
        if (
            str(cell["system"]).startswith(system_prefix)
            and cell["workload"] == workload
            and cell["concurrency"] == concurrency
        ):
            return dict(cell)
    raise KeyError(f"no {system_prefix} {workload} at {concurrency} in flight")


def ratios(report: dict[str, Any], concurrency: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    for label, workload, reference, reference_workload in RATIOS:
        node = _cell(report, "node", workload, concurrency)
        try:  # a floor measured per workload (new, hot), or an older report's single floor cell
            base = _cell(report, reference, workload, concurrency)
        except KeyError:
            base = _cell(report, reference, reference_workload, concurrency)
        figures[label] = node["throughput"] / base["throughput"]
        if reference == "floor":
            figures[f"{workload.split()[-1]} p99 ÷ floor p99"] = node["p99_ms"] / base["p99_ms"]
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--before", nargs="+", type=Path, required=True)
    parser.add_argument("--after", nargs="+", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    runs = {
        name: [ratios(json.loads(path.read_text()), args.concurrency) for path in paths]
        for name, paths in (("before", args.before), ("after", args.after))
    }
    labels = list(runs["before"][0])
    print(f"{args.concurrency} in flight")
    print("| ratio | before runs | after runs | before median | after median | change |")
    print("|---|---|---|---|---|---|")
    for label in labels:
        before = [run[label] for run in runs["before"]]
        after = [run[label] for run in runs["after"]]
        b, a = statistics.median(before), statistics.median(after)
        print(
            f"| {label} | {', '.join(f'{v:.2f}' for v in before)} | {', '.join(f'{v:.2f}' for v in after)} "
            f"| {b:.2f} | {a:.2f} | {a - b:+.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
