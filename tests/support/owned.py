"""Stopping what a test started, all of it, even when stopping one of them fails."""

from __future__ import annotations

from collections.abc import Sequence

from chiefofstate.cli.processes import Process


def stop_all(processes: Sequence[Process], *, kill: bool = False) -> None:
    """SIGTERM (or, with `kill`, SIGKILL) each process, newest first; every one is tried before the
    first failure, if any, is raised."""
    failures: list[BaseException] = []
    for process in reversed(processes):
        try:
            if kill:
                if process.alive():
                    process.kill()
            else:
                process.stop()
        except BaseException as failure:  # raised below, once the others were stopped
            failures.append(failure)
    if failures:
        raise failures[0]
