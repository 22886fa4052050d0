"""Markdown tables of a run: what `python -m benchmarks` prints and docs/performance.md quotes."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.results import Cell, CpuShares

FLOOR = "floor"
ECHO = "echo"


@dataclass
class Report:
    cells: list[Cell] = field(default_factory=list)
    recovery: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    scaleout: list[Cell] = field(default_factory=list)
    variants: list[Cell] = field(default_factory=list)
    generator_check: list[Cell] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    # concurrency → the single-row commit probe measured in that level's rounds (benchmarks/commit_probe.py)
    commit_probe: dict[int, dict[str, float]] = field(default_factory=dict)
    readside: list[dict[str, Any]] = field(default_factory=list)  # benchmarks/readside_bench.py, per store
    startup: dict[str, Any] = field(default_factory=dict)  # benchmarks/startup.py
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def _cell_from_json(data: dict[str, Any]) -> Cell:
    fields = dict(data)
    cpu = fields.pop("cpu", None)
    cell = Cell(**fields)
    cell.cpu = CpuShares(**cpu) if cpu else None
    return cell


def report_from_json(data: dict[str, Any]) -> Report:
    """A report saved with `--json`, to print again (`python -m benchmarks --render FILE`)."""
    lists = ("cells", "scaleout", "variants", "generator_check")
    return Report(
        **{name: [_cell_from_json(cell) for cell in data.get(name, [])] for name in lists},
        recovery=data.get("recovery", []),
        memory=data.get("memory", {}),
        profile=data.get("profile", {}),
        commit_probe={int(level): probe for level, probe in data.get("commit_probe", {}).items()},
        readside=data.get("readside", []),
        startup=data.get("startup", {}),
        machine=data.get("machine", {}),
        settings=data.get("settings", {}),
    )


def reference(cells: Sequence[Cell], cell: Cell) -> Cell | None:
    """The floor for ProcessCommand, the bare echo server for GetState, at the same concurrency: the
    floor's cell of the same workload (new or hot entities) where it has one, else its plain one."""
    if cell.workload.startswith("ProcessCommand"):
        system, workloads = FLOOR, (cell.workload, "ProcessCommand")
    else:
        system, workloads = ECHO, ("GetState",)
    for workload in workloads:
        for candidate in cells:
            kind = candidate.system.split(" [", 1)[0]  # "floor [uvloop]" is a floor too
            if (kind, candidate.workload, candidate.concurrency) == (system, workload, cell.concurrency):
                return candidate
    return None


def total_cpu_us(cell: Cell) -> float:
    """CPU per operation of every process the measurement used: server, handler, database, generator."""
    return sum(cell.cpu.per_op_us.values()) if cell.cpu is not None and cell.cpu.per_op_us else math.nan


def projected_throughput(cell: Cell, cpus: int) -> float:
    """Operations per second to expect on this machine with nothing else running, from CPU per operation:
    the lower of what all the CPUs allow for every process involved, and what one core allows for the
    server (its event loop is one thread; grpc's poller thread is counted in, which errs low)."""
    if cell.cpu is None or "server" not in cell.cpu.per_op_us or cell.concurrency < 2:
        return math.nan  # one request in flight is bound by latency, not by CPU
    return min(cpus * 1e6 / total_cpu_us(cell), 1e6 / cell.cpu.per_op_us["server"])


def capacity_ratio(cell: Cell, base: Cell | None, cpus: int) -> float:
    """The ratio of projected throughputs: what other jobs on the machine disturb least."""
    if base is None:
        return math.nan
    return projected_throughput(cell, cpus) / projected_throughput(base, cpus)


def _number(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def _ratio(value: float, base: float) -> str:
    if base == 0 or math.isnan(value) or math.isnan(base):
        return "n/a"
    return f"{value / base:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(item)) for item in column) for column in zip(header, *rows, strict=True)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows
    ]
    return "\n".join(lines)


def _flags(cell: Cell) -> str:
    notes = []
    if cell.errors:
        notes.append("errors " + ",".join(f"{code}={count}" for code, count in sorted(cell.errors.items())))
    if cell.exhausted:
        notes.append("ran out of ids")
    noisy = int(cell.extra.get("noisy_rounds_kept", 0))
    if noisy:
        notes.append(f"{noisy} of {cell.extra.get('rounds', '?')} rounds noisy")
    retried = int(cell.extra.get("retried_rounds", 0))
    if retried:
        notes.append(f"{retried} noisy rounds re-run")
    return "; ".join(notes)


def results_table(cells: Sequence[Cell], cpus: int) -> str:
    rows = []
    for cell in cells:
        base = reference(cells, cell)
        rows.append(
            [
                cell.system,
                cell.workload,
                str(cell.concurrency),
                _number(cell.throughput, 0),
                _number(cell.p50_ms, 2),
                _number(cell.p99_ms, 2),
                _number(cell.p999_ms, 2),
                _ratio(cell.throughput, base.throughput) if base else "n/a",
                _ratio(cell.p99_ms, base.p99_ms) if base else "n/a",
                _number(projected_throughput(cell, cpus), 0),
                _number(capacity_ratio(cell, base, cpus), 2),
                _flags(cell),
            ]
        )
    header = [
        "system",
        "workload",
        "conc.",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "ops/s ÷ ref",
        "p99 ÷ ref",
        "projected ops/s",
        "projected ÷ ref",
        "notes",
    ]
    return _table(header, rows)


def cpu_table(cells: Sequence[Cell]) -> str:
    groups = ("server", "handler", "database", "generator")
    rows = []
    for cell in cells:
        if cell.cpu is None:
            continue
        per_op = cell.cpu.per_op_us
        rows.append(
            [cell.system, cell.workload, str(cell.concurrency)]
            + [_number(per_op[group], 0) if group in per_op else "-" for group in groups]
            + [
                _number(cell.cpu.cores.get("server", math.nan), 2),
                _number(cell.cpu.cores.get("other", 0.0), 2),
                _number(float(cell.extra.get("idle_cores", math.nan)), 2),
            ]
        )
    header = [
        "system",
        "workload",
        "conc.",
        "server µs/op",
        "handler µs/op",
        "database µs/op",
        "generator µs/op",
        "server cores",
        "other cores",
        "idle cores",
    ]
    return _table(header, rows)


LONE_THROUGHPUT = 0.8  # of the floor's, with 1 or 4 commands in flight
LONE_SLACK_MS = 0.3  # allowed on top of the floor's p50 and one single-row commit's p50


def lone_client_rows(cells: Sequence[Cell], commit_probe: dict[int, dict[str, float]]) -> list[list[str]]:
    """A lone client (1 or 4 in flight) on PostgreSQL: p50 within the floor's plus one durable commit
    (measured in the same rounds) plus LONE_SLACK_MS, and throughput ≥ LONE_THROUGHPUT of the floor's."""
    rows = []
    for cell in cells:
        probe = commit_probe.get(cell.concurrency)
        base = reference(cells, cell)
        if (
            probe is None
            or base is None
            or cell.system != "node/postgres"
            or not cell.workload.startswith("ProcessCommand")
        ):
            continue
        budget = base.p50_ms + probe["p50_ms"] + LONE_SLACK_MS
        label = f"{cell.workload} c={cell.concurrency}"
        rows.append(
            [
                f"{label} p50 ≤ floor p50 {base.p50_ms:.2f} + commit p50 {probe['p50_ms']:.2f} "
                f"+ {LONE_SLACK_MS} ms = {budget:.2f}",
                f"{cell.p50_ms:.2f} ms (over floor +{cell.p50_ms - base.p50_ms:.2f})",
                _verdict(cell.p50_ms <= budget),
                "",
                "",
            ]
        )
        throughput = cell.throughput / base.throughput
        # With so few in flight the throughput follows the latency: a throughput met on CPU alone does
        # not say anything here, so no projection is shown.
        rows.append(
            [
                f"{label} throughput ≥ {LONE_THROUGHPUT} × floor",
                f"{throughput:.2f}",
                _verdict(throughput >= LONE_THROUGHPUT),
                "",
                "",
            ]
        )
    return rows


def targets_table(
    cells: Sequence[Cell], cpus: int, commit_probe: dict[int, dict[str, float]] | None = None
) -> str:
    """The targets: a lone client's latency (1 and 4 in flight), ProcessCommand on PostgreSQL at 64 in
    flight, GetState cached vs echo."""
    rows = lone_client_rows(cells, commit_probe or {})
    for cell in cells:
        base = reference(cells, cell)
        if base is None or cell.system in (FLOOR, ECHO):
            continue
        if (
            cell.workload.startswith("ProcessCommand")
            and cell.system == "node/postgres"
            and cell.concurrency == 64
        ):
            throughput = cell.throughput / base.throughput
            capacity = capacity_ratio(cell, base, cpus)
            p99 = cell.p99_ms / base.p99_ms
            rows.append(
                [
                    f"{cell.workload} c=64 throughput ≥ 0.90 × floor",
                    f"{throughput:.2f}",
                    _verdict(throughput >= 0.90),
                    _number(capacity, 2),
                    _verdict(capacity >= 0.90, capacity),
                ]
            )
            rows.append(
                [f"{cell.workload} c=64 p99 ≤ 1.3 × floor p99", f"{p99:.2f}", _verdict(p99 <= 1.3), "", ""]
            )
        if cell.workload == "GetState cached" and cell.system == "node/postgres":
            ratio = cell.throughput / base.throughput
            capacity = capacity_ratio(cell, base, cpus)
            rows.append(
                [
                    f"GetState cached c={cell.concurrency} ≥ 0.90 × echo",
                    f"{ratio:.2f}",
                    _verdict(ratio >= 0.90),
                    _number(capacity, 2),
                    _verdict(capacity >= 0.90, capacity),
                ]
            )
    header = ["target", "measured", "met?", "projected from CPU per op", "met?"]
    return _table(header, rows) if rows else ""


REPLAY_TARGET = 0.9  # of the raw unary call rate to the same handler
LAG_TARGET_MS = 50.0  # p99 at half the node's saturation rate
STARTUP_TARGET_MS = 1000.0


def readside_table(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for row in rows:
        replay, lag = row["replay"], row["lag"]
        body.append(
            [
                str(row["store"]),
                f"{replay['events']:,}",
                f"{replay['delivered_events_per_s']:,}",
                f"{replay['raw_unary_calls_per_s']:,}",
                f"{replay['ratio']:.2f}",
                _verdict(float(replay["ratio"]) >= REPLAY_TARGET),
                # ms per 1000 is µs per one
                f"{replay['node_cpu_ms_per_1000_events']:.0f} / "
                f"{replay['raw_client_cpu_ms_per_1000_calls']:.0f}",
                f"{lag['commands_per_s']} of {lag['saturation_commands_per_s']}",
                f"{lag['event_to_delivery_ms']['p50']} / {lag['event_to_delivery_ms']['p99']}",
                _verdict(float(lag["event_to_delivery_ms"]["p99"]) <= LAG_TARGET_MS),
            ]
        )
    header = [
        "store",
        "events replayed",
        "replay events/s",
        "raw calls/s",
        f"replay ÷ raw (≥ {REPLAY_TARGET})",
        "met?",
        "CPU µs per event: node / raw client",
        "lag run: commands/s of saturation",
        "lag p50 / p99 ms",
        f"p99 ≤ {LAG_TARGET_MS:g} ms?",
    ]
    return _table(header, body)


def startup_table(startup: dict[str, Any]) -> str:
    rows = []
    for name, events in (("empty", 0), ("full", startup["full"]["events"])):
        part = startup[name]
        rows.append(
            [
                f"{events:,} events",
                f"{part['median_ms']:,.0f}",
                f"{part['median_cpu_ms']:,.0f}",
                ", ".join(f"{value:,.0f}" for value in part["rounds_ms"]),
                _verdict(float(part["median_ms"]) < STARTUP_TARGET_MS),
            ]
        )
    rows.append(["first boot (runs the migrations)", f"{startup['first_boot_ms']:,.0f}", "", "", ""])
    header = ["journal", "to /ready, median ms", "node CPU by then, ms", "rounds, ms", "< 1 s?"]
    return _table(header, rows) + f"\n\nload average during the run: {startup['load_average']}"


def commit_table(report: Report) -> str:
    rows = [
        [str(level), f"{probe['commits']:,.0f}", f"{probe['p50_ms']:.2f}", f"{probe['p99_ms']:.2f}"]
        for level, probe in sorted(report.commit_probe.items())
    ]
    return _table(["measured in the rounds of conc.", "commits", "p50 ms", "p99 ms"], rows)


def _verdict(met: bool, value: float = 0.0) -> str:
    if math.isnan(value):
        return "n/a"
    return "yes" if met else "NO"


def recovery_table(rows: Sequence[dict[str, Any]]) -> str:
    body = [
        [
            str(row["store"]),
            f"{row['events']:,}",
            f"{row['restart_median_ms']:.2f} (min {row['restart_min_ms']:.2f}, n={row['restarts']})",
            f"{row['passivated_median_ms']:.2f} "
            f"(p90 {row['passivated_p90_ms']:.2f}, n={row['passivated_samples']})",
            f"{row['journal_median_ms']:.3f}",
        ]
        for row in rows
    ]
    header = [
        "store",
        "events in history",
        "first GetState after restart, ms",
        "GetState after passivation, ms",
        "Journal.latest_state, ms",
    ]
    return _table(header, body)


def memory_table(memory: dict[str, Any]) -> str:
    if not memory:
        return ""
    rows = [
        ["store", str(memory["store"])],
        ["entities cached", f"{memory['entities']:,}"],
        [
            "node RSS before / after",
            f"{memory['rss_before'] / 2**20:,.1f} MiB / {memory['rss_after'] / 2**20:,.1f} MiB",
        ],
        ["RSS per cached entity", f"{memory['per_entity']:,.0f} B"],
        ["serialized state per entity (payload)", f"{memory['payload']:,} B"],
        ["overhead per entity (RSS − payload)", f"{memory['overhead']:,.0f} B"],
    ]
    full = memory.get("cache_full")
    if full:
        rows.append(
            [
                f"GetState cold c={full['concurrency']}, cache below capacity",
                f"{full['below']['throughput']:,.0f} ops/s, p99 {full['below']['p99_ms']:.1f} ms",
            ]
        )
        rows.append(
            [
                f"GetState cold c={full['concurrency']}, cache at capacity ({memory['capacity']:,})",
                f"{full['at']['throughput']:,.0f} ops/s, p99 {full['at']['p99_ms']:.1f} ms",
            ]
        )
    return _table(["memory", "value"], rows)


def scaleout_table(cells: Sequence[Cell]) -> str:
    if not cells:
        return ""
    base = {cell.workload: cell for cell in cells if cell.system.startswith("1 node")}
    rows = []
    for cell in cells:
        one = base.get(cell.workload)
        rows.append(
            [
                cell.system,
                cell.workload,
                str(cell.concurrency),
                _number(cell.throughput, 0),
                _number(cell.p99_ms, 2),
                _ratio(cell.throughput, one.throughput) if one else "n/a",
                _number(cell.cpu.cores.get("server", math.nan), 2) if cell.cpu else "n/a",
                _number(sum(cell.cpu.per_op_us.values()), 0) if cell.cpu else "n/a",
            ]
        )
    header = ["nodes", "workload", "conc.", "ops/s", "p99 ms", "factor", "node cores", "all CPU µs/op"]
    return _table(header, rows)


def generator_table(cells: Sequence[Cell]) -> str:
    rows = [
        [
            cell.system,
            str(cell.concurrency),
            _number(cell.throughput, 0),
            _number(cell.p99_ms, 2),
            _number(cell.cpu.cores.get("server", math.nan), 2) if cell.cpu else "n/a",
            _number(cell.cpu.cores.get("generator", math.nan), 2) if cell.cpu else "n/a",
            _number(cell.cpu.cores.get("other", math.nan), 2) if cell.cpu else "n/a",
        ]
        for cell in cells
    ]
    header = ["setup", "conc.", "ops/s", "p99 ms", "echo server cores", "generator cores", "other cores"]
    return _table(header, rows)


def variants_table(cells: Sequence[Cell], cpus: int) -> str:
    rows = []
    for cell in cells:
        same_loop = [other for other in cells if other.extra.get("loop") == cell.extra.get("loop")]
        base = reference(same_loop, cell)
        server = cell.cpu.per_op_us.get("server", math.nan) if cell.cpu else math.nan
        rows.append(
            [
                str(cell.extra.get("variant", "")),
                cell.workload,
                _number(cell.throughput, 0),
                _number(cell.p99_ms, 2),
                _ratio(cell.throughput, base.throughput) if base else "n/a",
                _number(capacity_ratio(cell, base, cpus), 2),
                _number(server, 0),
                _flags(cell),
            ]
        )
    header = [
        "variant",
        "workload",
        "ops/s",
        "p99 ms",
        "ops/s ÷ ref",
        "projected ÷ ref",
        "server µs/op",
        "notes",
    ]
    return _table(header, rows)


def machine_table(machine: dict[str, Any], settings: dict[str, Any]) -> str:
    rows = [[key.replace("_", " "), str(value)] for key, value in {**machine, **settings}.items()]
    return _table(["run", "value"], rows)


def render(report: Report) -> str:
    cpus = int(report.machine.get("cpus") or os.cpu_count() or 1)
    parts = []
    if report.machine:
        parts += ["## Run", machine_table(report.machine, report.settings)]
    if report.cells:
        parts += ["## Throughput and latency (medians of the windows)", results_table(report.cells, cpus)]
        parts += ["## CPU per operation", cpu_table(report.cells)]
        if report.commit_probe:
            parts += ["## Single-row PostgreSQL commit (INSERT + COMMIT, one at a time)"]
            parts += [commit_table(report)]
        targets = targets_table(report.cells, cpus, report.commit_probe)
        if targets:
            parts += ["## Targets", targets]
    if report.generator_check:
        parts += ["## Load generator check (bare echo server)", generator_table(report.generator_check)]
    if report.recovery:
        parts += ["## Recovery after a restart (cold cache)", recovery_table(report.recovery)]
    if report.memory:
        parts += ["## Memory per cached entity", memory_table(report.memory)]
    if report.scaleout:
        parts += ["## Scale-out on one machine (PostgreSQL)", scaleout_table(report.scaleout)]
    if report.variants:
        parts += [
            "## Experiments (PostgreSQL; each node against a floor on the same loop)",
            variants_table(report.variants, cpus),
        ]
    if report.profile:
        parts += ["## Profile of the node", str(report.profile.get("summary", ""))]
    if report.readside:
        parts += ["## Read-side replay and lag (no-op and bank gRPC read handlers)"]
        parts += [readside_table(report.readside)]
    if report.startup:
        parts += ["## Start-up: cos serve to /ready 200 on PostgreSQL", startup_table(report.startup)]
    return "\n\n".join(parts) + "\n"
