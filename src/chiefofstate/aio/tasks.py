"""Helpers for owning background tasks: whoever starts one cancels and awaits it."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks and wait until they have finished.

    `gather(return_exceptions=True)` collects the tasks' CancelledErrors, while a cancellation of
    the caller itself still propagates (it is never swallowed).
    """
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)
