"""When to snapshot and what to delete afterwards (docs/contract.md §4.5)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    enabled: bool = True
    frequency: int = 100
    retain: int = 2
    delete_events: bool = False  # COS_JOURNAL_LOGICAL_DELETION

    def snapshot_due(self, first_new_sequence: int, last_new_sequence: int) -> int | None:
        """The highest multiple of `frequency` among the sequence numbers just persisted, if any.

        A command that persists several events (D1) may cross a multiple without ending on it; every
        event row carries its resulting state, so the snapshot is still taken at exactly that multiple.
        """
        if not self.enabled or self.frequency <= 0:
            return None
        highest = (last_new_sequence // self.frequency) * self.frequency
        return highest if highest >= first_new_sequence and highest > 0 else None

    def deletion_bound(self, snapshot_sequence: int) -> int:
        """Snapshots below, and (with deletion on) events up to, this sequence number go."""
        return snapshot_sequence - self.retain * self.frequency
