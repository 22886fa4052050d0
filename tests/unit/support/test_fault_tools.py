"""The fault suite's own tools that need no node: the stepped clock's offset file and the ballast
that fills a file system (tests/faults/clock.py, tests/faults/disk.py)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.faults import disk
from tests.faults.clock import SteppedClock


def test_the_offset_file_holds_a_signed_offset_in_seconds_replaced_whole(tmp_path: Path) -> None:
    clock = SteppedClock(tmp_path / "offset")
    assert (tmp_path / "offset").read_text() == "+0\n"
    clock.set(7200)
    assert (tmp_path / "offset").read_text() == "+7200\n"
    clock.set(-300)
    assert (tmp_path / "offset").read_text() == "-300\n" and clock.offset_s == -300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offset"]  # no scratch file left behind
    env = clock.env()
    assert env["FAKETIME_TIMESTAMP_FILE"] == str(tmp_path / "offset")
    assert env["FAKETIME_DONT_FAKE_MONOTONIC"] == "1"
    assert Path(env["LD_PRELOAD"]).is_file()


def test_the_ballast_is_written_until_the_file_system_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = 3 * (1 << 20) + 5 * (1 << 12) + 7  # bytes left on a pretend file system

    class Limited:
        def __init__(self) -> None:
            self.size = 0

        def write(self, block: bytes) -> int:
            if self.size + len(block) > room:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.size += len(block)
            return len(block)

        def __enter__(self) -> Limited:
            return self

        def __exit__(self, *_: object) -> None:
            pass

    limited = Limited()
    monkeypatch.setattr(Path, "open", lambda *_args, **_kwargs: limited)
    assert disk.fill(tmp_path / "ballast") == room
    assert limited.size == room
