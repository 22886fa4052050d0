"""Reading tokens back from stored EventWrappers, on a SQLite file laid out by the store's own migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.ports.journal import EVENT_MANIFEST, SERIALIZER_ID
from tests.support.journal_reader import read_journal, read_sqlite, read_write_times_ms, token_of

MIGRATION = Path(__file__).resolve().parents[3] / "src/chiefofstate/stores/sqlite/migrations/0006_initial.sql"


def wrapper(event: Message, entity: str = "a", revision: int = 1) -> bytes:
    packed = any_pb2.Any()
    packed.Pack(event)
    return EventWrapper(
        event=packed, meta=MetaData(entity_id=entity, revision_number=revision)
    ).SerializeToString()


def store(path: Path, rows: list[tuple[str, int, bytes]], manifest: str = EVENT_MANIFEST) -> Path:
    connection = sqlite3.connect(path)
    with connection:
        connection.executescript(MIGRATION.read_text())
        connection.executemany(
            "INSERT INTO event_journal (persistence_id, sequence_number, writer, event_ser_id, "
            "event_ser_manifest, event_payload) VALUES (?, ?, 'w', ?, ?, ?)",
            [(entity, revision, SERIALIZER_ID, manifest, payload) for entity, revision, payload in rows],
        )
    connection.close()
    return path


def test_tokens_are_the_opening_owner_and_the_deposit_reference() -> None:
    assert token_of(wrapper(bank_pb2.AccountOpened(account_id="a", owner="t-1"))) == "t-1"
    assert token_of(wrapper(bank_pb2.MoneyDeposited(amount=1, reference="t-2"))) == "t-2"
    assert token_of(wrapper(bank_pb2.MoneyDeposited(amount=1))) is None  # a deposit without a reference
    assert token_of(wrapper(bank_pb2.MoneyWithdrawn(amount=1))) is None


def test_reads_every_entity_of_the_prefix_in_revision_order(tmp_path: Path) -> None:
    path = store(
        tmp_path / "cos.db",
        [
            ("s1-b", 2, wrapper(bank_pb2.MoneyDeposited(amount=1, reference="d-1"))),
            ("s1-b", 1, wrapper(bank_pb2.AccountOpened(owner="o-1"))),
            ("s1-a", 1, wrapper(bank_pb2.AccountOpened(owner="o-2"))),
            ("other", 1, wrapper(bank_pb2.AccountOpened(owner="o-3"))),
        ],
    )
    expected = {"s1-a": [(1, "o-2")], "s1-b": [(1, "o-1"), (2, "d-1")]}
    assert read_sqlite(path, prefix="s1-") == expected
    assert read_journal({"COS_DB_PATH": str(path)}, prefix="s1-") == expected
    assert set(read_sqlite(path)) == {"s1-a", "s1-b", "other"}


def test_a_row_of_another_serializer_is_refused_not_misread(tmp_path: Path) -> None:
    path = store(tmp_path / "cos.db", [("a", 1, b"\x00")], manifest="something.Else")
    with pytest.raises(ValueError, match="serializer"):
        read_sqlite(path)


def test_write_times_are_read_for_the_prefix_only(tmp_path: Path) -> None:
    path = store(
        tmp_path / "cos.db",
        [
            ("s1-a", 1, wrapper(bank_pb2.AccountOpened(owner="o-1"))),
            ("s1-a", 2, wrapper(bank_pb2.MoneyDeposited(amount=1, reference="d-1"))),
            ("other", 1, wrapper(bank_pb2.AccountOpened(owner="o-2"))),
        ],
    )
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("UPDATE event_journal SET write_timestamp = 1000 * sequence_number")
    connection.close()
    assert sorted(read_write_times_ms({"COS_DB_PATH": str(path)}, prefix="s1-")) == [1000, 2000]
