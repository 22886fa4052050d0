"""The cluster suite reports like the fault suite: one table per run and one for the session."""

from tests.faults.conftest import judge, pytest_terminal_summary

__all__ = ["judge", "pytest_terminal_summary"]
