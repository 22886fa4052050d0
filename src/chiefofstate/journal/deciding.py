"""What the journal's batchers know of the commands still deciding (between HandleCommand and their
append): how many there are and how long deciding takes.

The command processor reports into one `DecidingCommands` object that the node hands to it, to the
group-commit writer and to the coalesced state reads, so that the waits that gather work into one round
trip are sized by the commands they serve (core/batching.py) without any of them knowing the others.
"""

from __future__ import annotations

from chiefofstate.core.batching import DecideTime


class DecidingCommands:
    __slots__ = ("count", "decide_time")

    def __init__(self) -> None:
        self.count = 0  # commands between the start of HandleCommand and their append
        self.decide_time = DecideTime()

    def started(self) -> None:
        self.count += 1

    def finished(self, seconds: float) -> None:
        self.count -= 1
        self.decide_time.record(seconds)

    def appends_coming(self) -> bool:
        """Whether a flush may wait: other commands' appends are on their way."""
        return self.count > 0

    def append_wait_s(self) -> float:
        return self.decide_time.append_wait_s()

    def read_wait_s(self) -> float:
        return self.decide_time.read_wait_s()
