"""Reading py-spy's raw (collapsed-stack) output into a short summary of where the node's time goes.

Each line of the raw format is `frame;frame;...;leaf COUNT`, root first; a frame is `function (file:line)`
or, with `--native`, a native `symbol (library)`. The benchmark records with `--nonblocking` and Python
frames only: native unwinding has to stop the process for every sample, which halves the node's
throughput and changes what is measured. Without native frames, time spent in C is charged to the
innermost Python frame: `Handle._run` (a loop callback implemented in C) stands for grpc's Cython
completion handlers and asyncio's C task steps. Without `--idle`, py-spy leaves idle samples out, so
the event-loop thread's idle share is what is missing from the expected count (rate × duration).
"""

from __future__ import annotations

import inspect
import selectors
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "poll", "select", "pthread_cond_wait", "pthread_cond_timedwait")
# Threads parked on a lock (grpc's and the default executor's) are idle too, whatever libc frame is last.
IDLE_FRAMES = ("PyThread_acquire_lock_timed",)
SYSCALL_LEAVES = frozenset(
    (
        "sendmsg",
        "send",
        "recv",
        "recvmsg",
        "recvfrom",
        "write",
        "read",
        "writev",
        "readv",
        "eventfd_write",
        "eventfd_read",
        "syscall",
        "epoll_ctl",
        "clock_gettime",
    )
)
# (substring of a frame, category): the innermost frame that matches one decides a sample's category.
CATEGORIES = (
    ("chiefofstate/gen/", "protobuf (generated)"),
    ("grpc/", "grpc (cython core + aio)"),
    ("grpc_", "grpc (cython core + aio)"),
    ("prometheus_client", "metrics (prometheus_client)"),
    ("opentelemetry", "tracing (opentelemetry)"),
    ("chiefofstate/telemetry/", "metrics and tracing (chiefofstate.telemetry)"),
    ("asyncpg", "asyncpg"),
    ("aiosqlite", "sqlite"),
    ("sqlite3", "sqlite"),
    ("google/protobuf", "protobuf"),
    ("_upb", "protobuf"),
    ("uuid.py", "uuid"),
    ("logging/", "logging"),
    ("chiefofstate/", "chiefofstate"),
    ("benchmarks/", "benchmark code"),
    ("asyncio/", "asyncio event loop"),
    ("selectors.py", "asyncio event loop"),
    ("selectmodule", "asyncio event loop"),
    ("threading.py", "threads"),
)


@dataclass
class Summary:
    main_samples: int = 0
    main_idle: int = 0
    other_thread_samples: int = 0
    other_thread_idle: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    own_inclusive: Counter[str] = field(default_factory=Counter)  # chiefofstate functions, busy samples
    self_python: Counter[str] = field(default_factory=Counter)  # innermost Python frame of busy samples


def _symbol(frame: str) -> str:
    return frame.split(" ", 1)[0]


def _selector_wait_frame() -> str:
    """`select (selectors.py:N)` where N is the line that blocks in epoll: a loop with nothing to do."""
    source, first = inspect.getsourcelines(selectors.DefaultSelector.select)
    offset = next(index for index, line in enumerate(source) if "self._selector.poll(" in line)
    return f".select (selectors.py:{first + offset})"


SELECTOR_WAIT = _selector_wait_frame()


def _is_idle(frames: list[str]) -> bool:
    return (
        _symbol(frames[-1]) in IDLE_LEAVES
        or frames[-1].endswith(SELECTOR_WAIT)
        or any(_symbol(frame) in IDLE_FRAMES for frame in frames[-3:])
    )


C_CALLBACKS = "loop callbacks in C (grpc Cython core, asyncio C tasks)"


def _category(frames: list[str]) -> str:
    if any("gc_collect" in frame for frame in frames):
        return "garbage collector"
    if _symbol(frames[-1]) in SYSCALL_LEAVES:
        return "system calls (sockets, eventfd, futex)"
    if frames[-1].startswith("Handle._run (asyncio/events.py"):
        return C_CALLBACKS
    for frame in reversed(frames):
        for needle, category in CATEGORIES:
            if needle in frame:
                return category
    return "other (interpreter, libc)"


def _is_python(frame: str) -> bool:
    return frame.endswith(")") and ".py:" in frame


def summarise_lines(lines: list[str], expected_samples: int = 0) -> Summary:
    """`expected_samples` (rate × duration) is needed when idle samples were left out (no `--idle`)."""
    summary = Summary()
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        idle = _is_idle(frames)
        if frames[0].startswith("thread ("):  # recorded with --threads: "thread (TID): NAME"
            on_main_thread = frames[0].endswith(": MainThread")
            frames = frames[1:] or [""]
        else:
            on_main_thread = any("_run_module_as_main" in frame for frame in frames)
        if not on_main_thread:
            summary.other_thread_samples += count
            summary.other_thread_idle += count if idle else 0
            continue
        summary.main_samples += count
        if idle:
            summary.main_idle += count
            continue
        summary.categories[_category(frames)] += count
        python_frames = [frame for frame in frames if _is_python(frame)]
        if python_frames:
            summary.self_python[python_frames[-1]] += count
        seen = set()
        # Only what runs inside a loop callback: the frames above it are the process's entry point.
        in_callback = False
        for frame in python_frames:
            in_callback = in_callback or frame.startswith("Handle._run ")
            if in_callback and "chiefofstate/" in frame and "/gen/" not in frame:
                name = frame.split(" (", 1)[0]
                if name not in seen:
                    seen.add(name)
                    summary.own_inclusive[name] += count
    missing = expected_samples - summary.main_samples
    if missing > 0:  # py-spy leaves out samples of a thread it sees blocked
        summary.main_samples += missing
        summary.main_idle += missing
    return summary


def summarise_file(path: Path, expected_samples: int = 0) -> Summary:
    return summarise_lines(path.read_text().splitlines(), expected_samples)


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:5.1f}%" if total else "  n/a"


def render(summary: Summary, top: int = 12) -> str:
    busy = summary.main_samples - summary.main_idle
    lines = [
        f"event-loop thread: {_share(busy, summary.main_samples).strip()} busy, "
        f"{_share(summary.main_idle, summary.main_samples).strip()} waiting in epoll "
        f"({summary.main_samples:,} samples); other threads busy for "
        f"{summary.other_thread_samples - summary.other_thread_idle:,} samples",
        "",
        "busy time of the event-loop thread by the innermost library on the stack:",
        "",
    ]
    lines += [f"    {_share(count, busy)}  {name}" for name, count in summary.categories.most_common()]
    lines += ["", "chiefofstate functions on the stack (inclusive, share of busy time):", ""]
    lines += [f"    {_share(count, busy)}  {name}" for name, count in summary.own_inclusive.most_common(top)]
    lines += ["", "innermost Python frames (self time, share of busy time):", ""]
    lines += [f"    {_share(count, busy)}  {name}" for name, count in summary.self_python.most_common(top)]
    return "\n".join(lines)


OTHER_THREADS = "other threads (grpc poller, executor)"


@dataclass(frozen=True)
class Profile:
    """One profiled measurement: its samples, and the process's CPU per operation measured in /proc."""

    label: str
    summary: Summary
    cpu_per_op_us: float

    def per_op_us(self) -> dict[str, float]:
        """Busy samples of every thread, scaled so that they add up to the measured CPU per operation."""
        summary = self.summary
        other_busy = summary.other_thread_samples - summary.other_thread_idle
        busy = summary.main_samples - summary.main_idle + other_busy
        if busy == 0:
            return {}
        scale = self.cpu_per_op_us / busy
        figures = {name: count * scale for name, count in summary.categories.items()}
        figures[OTHER_THREADS] = other_busy * scale
        return figures


def render_all(profiles: list[Profile], top: int = 12) -> str:
    if not profiles:
        return "(no profile: py-spy did not run)"
    columns = [profile.per_op_us() for profile in profiles]
    names = sorted(
        {name for column in columns for name in column}, key=lambda n: -max(c.get(n, 0) for c in columns)
    )
    header = ["CPU µs per operation, by innermost library", *(profile.label for profile in profiles)]
    rows = [[name, *(f"{column.get(name, 0.0):,.0f}" for column in columns)] for name in names]
    rows.append(["total (measured in /proc)", *(f"{profile.cpu_per_op_us:,.0f}" for profile in profiles)])
    rows.append(
        [
            "event-loop thread idle",
            *(_share(p.summary.main_idle, p.summary.main_samples).strip() for p in profiles),
        ]
    )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
        for row in [header, *rows]
    ]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    parts = ["\n".join(lines)]
    parts += [
        f"#### {profile.label}\n\n{render(profile.summary, top)}"
        for profile in profiles
        if profile.summary.own_inclusive
    ]
    return "\n\n".join(parts)
