"""Which event loop runs the node (COS_EVENT_LOOP)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_on_event_loop(main: Coroutine[Any, Any, T], event_loop: str) -> T:
    """Run `main` to completion on `uvloop` or the stock `asyncio` loop.

    uvloop takes less CPU per request than the stock loop (the benchmarks' `variants` suite measures
    by how much, docs/performance.md); where it is not installed (it has no Windows build) the stock
    loop serves the same way, only slower.
    """
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
