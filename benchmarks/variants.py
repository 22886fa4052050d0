"""`cos serve` with an experimental change applied in-process, to size a proposed source change.

Run as `python -m benchmarks.variants NAME[,NAME...]`; the node reads its COS_* environment as usual.
Nothing under src/ is edited: each variant patches the running process only, and the measured gain
backs (or refutes) the recommendation in docs/performance.md.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable


def tune_gc() -> None:
    """Freeze start-up objects and collect the young generation less often (proposal: do so in serve)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def short_switch_interval() -> None:
    """Let other threads (grpc's poller) take the GIL after 0.5 ms instead of 5 ms of a busy loop."""
    sys.setswitchinterval(0.0005)


def quarter_append_wait() -> None:
    """Group commit waits for deciding commands a quarter of their decide time instead of all of it."""
    from chiefofstate.core import batching

    batching.APPEND_SHARE = 0.25


def double_append_wait() -> None:
    """Group commit waits for deciding commands up to twice their decide time."""
    from chiefofstate.core import batching

    batching.APPEND_SHARE = 2.0


def quadruple_append_wait() -> None:
    """Group commit waits for deciding commands up to four times their decide time."""
    from chiefofstate.core import batching

    batching.APPEND_SHARE = 4.0


def longer_read_wait() -> None:
    """Recovery reads wait for company up to the whole decide time instead of half of it."""
    from chiefofstate.core import batching

    batching.READ_SHARE = 1.0


def no_append_wait() -> None:
    """Group commit flushes as soon as the writer is free (batches form only behind a flush in flight)."""
    from chiefofstate.core import batching

    batching.APPEND_SHARE = 0.0


VARIANTS: dict[str, Callable[[], None]] = {
    "gc": tune_gc,
    "switch": short_switch_interval,
    "quarter-append-wait": quarter_append_wait,
    "no-append-wait": no_append_wait,
    "double-append-wait": double_append_wait,
    "quadruple-append-wait": quadruple_append_wait,
    "longer-read-wait": longer_read_wait,
}


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m benchmarks.variants NAME[,NAME...] (from {', '.join(VARIANTS)})")
    for name in filter(None, sys.argv[1].split(",")):
        VARIANTS[name]()
    from chiefofstate.cli import main as cos_main

    sys.argv = ["cos", "serve"]
    cos_main()


if __name__ == "__main__":
    main()
