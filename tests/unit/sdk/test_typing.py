"""mypy --strict on application code written with the SDK: a handler whose event method returns another
type than the state it folds, a command method returning something that is not an event, a read handler
method taking the read side id as anything but a `str`, or a client state used as the wrong type, are
reported; correct code passes. Lines marked `# error` must be reported, and no other line (mypy reports a
method's mistake on its decorator)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

GOOD = """
from google.protobuf.wrappers_pb2 import Int32Value, Int64Value, StringValue

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.sdk import CosClient, ReadHandler, WriteHandler, command, event, handles


class Counter(WriteHandler[Int64Value]):
    @command(StringValue)
    def add(self, command: StringValue, state: Int64Value, meta: MetaData) -> Int32Value:
        return Int32Value(value=len(command.value))

    @command(Int32Value)
    async def many(self, command: Int32Value, state: Int64Value, meta: MetaData) -> list[Int32Value]:
        return [Int32Value(value=1)] * command.value

    @event(Int32Value)
    def added(self, event: Int32Value, state: Int64Value, meta: MetaData) -> Int64Value:
        return Int64Value(value=state.value + event.value)


class Log(ReadHandler[Int64Value]):
    @handles(Int32Value)
    async def seen(self, event: Int32Value, state: Int64Value, meta: MetaData) -> bool:
        return state.value >= 0

    @handles(StringValue)
    def seen_by(self, event: StringValue, state: Int64Value, meta: MetaData, read_side_id: str) -> None:
        print(read_side_id.upper())


async def use() -> int:
    async with CosClient("localhost:9000", Int64Value) as client:
        state, meta = await client.process("c-1", StringValue(value="abc"))
        return state.value + meta.revision_number
"""

BAD = """
from google.protobuf.wrappers_pb2 import Int32Value, Int64Value, StringValue

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.sdk import CosClient, ReadHandler, WriteHandler, command, event, handles


class Log(ReadHandler[Int64Value]):
    @handles(Int32Value)  # error
    def seen_by(self, event: Int32Value, state: Int64Value, meta: MetaData, read_side_id: int) -> None:
        print(read_side_id + 1)


class Counter(WriteHandler[Int64Value]):
    @command(StringValue)  # error
    def add(self, command: StringValue, state: Int64Value, meta: MetaData) -> int:
        return 1

    @event(Int32Value)  # error
    def added(self, event: Int32Value, state: Int64Value, meta: MetaData) -> StringValue:
        return StringValue(value="not the state")

    @event(Int32Value)  # error
    async def added_later(self, event: Int32Value, state: Int64Value, meta: MetaData) -> StringValue:
        return StringValue(value="not the state")


async def use() -> str:
    async with CosClient("localhost:9000", Int64Value) as client:
        state, _ = await client.process("c-1", StringValue(value="abc"))
        wrong: StringValue = state  # error
        return wrong.value
"""


@pytest.mark.slow
def test_mypy_strict_reports_wrong_state_types_in_user_code(tmp_path: Path) -> None:
    (tmp_path / "good_app.py").write_text(GOOD)
    (tmp_path / "bad_app.py").write_text(BAD)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(REPO / ".mypy_cache"),
            str(tmp_path / "good_app.py"),
            str(tmp_path / "bad_app.py"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    reported = {
        (Path(match[1]).name, int(match[2]))
        for match in re.finditer(r"^(.*?):(\d+): error:", output, re.MULTILINE)
    }
    expected = {
        ("bad_app.py", number)
        for number, line in enumerate(BAD.splitlines(), start=1)
        if line.rstrip().endswith("# error")
    }
    assert len(expected) == 5
    assert reported == expected, output
