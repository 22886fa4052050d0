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


def batching_share(name: str, share: float) -> Callable[[], None]:
    """Sets one of core/batching.py's shares of the decide time (APPEND_SHARE or READ_SHARE): how long
    group commit waits for deciding commands, or recovery reads for company."""

    def apply() -> None:
        from chiefofstate.core import batching

        setattr(batching, name, share)

    return apply


VARIANTS: dict[str, Callable[[], None]] = {
    "gc": tune_gc,
    "switch": short_switch_interval,
    # the group-commit wait as a multiple of the decide time (2 is the default)
    **{f"append-wait-x{share:g}": batching_share("APPEND_SHARE", share) for share in (0, 0.25, 1, 4)},
    # the recovery read's wait for company (0.5 is the default)
    "read-wait-x1": batching_share("READ_SHARE", 1.0),
}


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m benchmarks.variants NAME[,NAME...] (from {', '.join(VARIANTS)})")
    for name in filter(None, sys.argv[1].split(",")):
        VARIANTS[name]()
    from chiefofstate.cli.main import main as cos_main

    sys.argv = ["cos", "serve"]
    cos_main()


if __name__ == "__main__":
    main()
