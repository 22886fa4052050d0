"""`python -m benchmarks`: measure the node against the floor harness; see docs/performance.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import http_suite
from benchmarks.engine import Timing
from benchmarks.report import Report, render, report_from_json
from benchmarks.suite import Plan, progress, run

SUITES = ("table", "recovery", "memory", "scaleout", "variants", "profile", "readside", "startup", "http")
DEFAULT_SUITES = ("table", "recovery", "memory", "scaleout", "readside", "startup", "http")


def _machine() -> dict[str, Any]:
    memory_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "source": _source_version(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 2**20, 1),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def _source_version() -> str:
    """The commit measured, and whether the working tree had uncommitted changes under src/."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = len(dirty.stdout.splitlines())
    return commit.stdout.strip() + (f" + {changed} uncommitted files under src/" if changed else "")


def _plan(args: argparse.Namespace) -> Plan:
    suites = (
        frozenset(args.suite.split(","))
        if args.suite
        else frozenset(("table",) if args.quick else DEFAULT_SUITES)
    )
    unknown = suites - set(SUITES)
    if unknown:
        raise SystemExit(f"unknown suite(s) {sorted(unknown)}; choose from {', '.join(SUITES)}")
    stores = ("postgres", "sqlite") if args.store == "both" else (args.store,)
    if args.quick:
        return Plan(
            stores=stores,
            levels=tuple(args.concurrency or (1, 64)),
            timing=Timing(warmup_s=0.5, window_s=1.0, rounds=1),
            suites=suites,
            generators=args.generators,
            seed=args.seed,
            cold_per_level=8_000,
            history_events=1_000,
            recovery_restarts=2,
            recovery_samples=3,
            memory_entities=5_000,
            profile_seconds=5.0,
            readside_events=2_000,
            lag_seconds=2.0,
            startup_events=3_000,
            startup_rounds=1,
            profile_dir=args.profile_dir,
            quiet_budget_s=args.quiet_wait,
            postgres_server=args.pg,
            keep_logs=args.keep_logs,
        )
    timing = Timing(warmup_s=args.warmup, window_s=args.window, rounds=args.rounds)
    return Plan(
        stores=stores,
        levels=tuple(args.concurrency or (1, 4, 16, 64, 256)),
        timing=timing,
        suites=suites,
        generators=args.generators,
        seed=args.seed,
        cold_per_level=cold_ids_needed(timing),
        profile_dir=args.profile_dir,
        quiet_budget_s=args.quiet_wait,
        postgres_server=args.pg,
        keep_logs=args.keep_logs,
    )


COLD_READS_PER_SECOND = 5_000  # above any cold-read rate measured here (≈ 3,100 per second)


def cold_ids_needed(timing: Timing) -> int:
    """Seeded ids for one level of the cold GetState workload: each id is read once, in every round's
    warm-up and window, so longer or more rounds need more of them."""
    seconds = timing.rounds * (timing.warmup_s + timing.window_s)
    return max(40_000, int(seconds * COLD_READS_PER_SECOND))


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: every started process is stopped on the way out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of well under a minute (CI)")
    parser.add_argument("--store", choices=("postgres", "sqlite", "both"), default="both")
    parser.add_argument(
        "--pg",
        choices=("private", "local"),
        default="private",
        help="private: a PostgreSQL server of our own (default); local: 127.0.0.1:5432 as the tests use",
    )
    parser.add_argument("--suite", default="", help=f"comma-separated, from {', '.join(SUITES)}")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        help="requests in flight (default 1 4 16 64 256)",
    )
    parser.add_argument("--generators", type=int, default=1, help="load generator processes (default 1)")
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="seconds of load before each round's window"
    )
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measured window")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement (figures are medians)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--nice",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="priority change for every benchmark process (default -10 as root, else 0)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="seconds in total the run may wait, before measurements, for other jobs to leave the CPUs",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--render", type=Path, help="print the tables of a file written by --json, run nothing"
    )
    parser.add_argument("--profile-dir", type=Path, help="where the profile suite writes py-spy output")
    parser.add_argument("--keep-logs", action="store_true", help="keep every process's log after a good run")
    args = parser.parse_args()
    if args.render:
        print(render(report_from_json(json.loads(args.render.read_text()))))
        return 0
    plan = _plan(args)
    if args.nice:
        # Every process of the run inherits this: on a shared box, other jobs then yield the CPUs to the
        # measured systems instead of sharing them evenly (root only; the floor and the node alike).
        try:
            os.nice(args.nice)
        except PermissionError:
            progress(f"cannot change priority by {args.nice} (not root); running at normal priority")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started = time.monotonic()
    machine = _machine()
    progress(f"machine: {machine}")
    try:
        report: Report = run(plan)
    except KeyboardInterrupt:
        progress("interrupted; every process the run started has been stopped")
        return 130
    report.machine = machine
    report.settings = {
        "postgres": f"{plan.postgres_server} server, fsync on" if "postgres" in plan.stores else "not used",
        "priority": f"nice {args.nice}" if args.nice else "normal",
        "stores": plan.stores,
        "levels": plan.levels,
        "timing": asdict(plan.timing),
        "suites": sorted(plan.suites),
        "generators": plan.generators,
        "seed": plan.seed,
        "took_s": round(time.monotonic() - started, 1),
    }
    print(render(report))
    if "http" in plan.suites:
        # its own processes and its own side-by-side rounds (SQLite, or PostgreSQL when COS_DB_HOST is set)
        seconds = min(args.window, 1.0) if args.quick else 3.0
        print(http_suite.measure(duration_s=seconds, rounds=plan.timing.rounds))
    print(f"took {report.settings['took_s']}s on {machine['cpus']} CPUs ({machine['cpu_model']})")
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
