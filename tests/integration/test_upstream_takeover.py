"""A database written by upstream (schema version 6) is taken over in place (decision D2)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from chiefofstate_examples.bank import client as bank
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from chiefofstate.cli.processes import Process, node_environment, start_node
from chiefofstate.core.sharding import shard_of
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper, StateWrapper
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from tests.integration.conftest import base_env, postgres_env
from tests.support.postgres import PgServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

# The schema as upstream's version 6 creates it (akka-persistence-jdbc tables plus its own).
UPSTREAM_SCHEMA = """
CREATE TABLE event_journal(
  ordering BIGSERIAL, persistence_id VARCHAR(255) NOT NULL, sequence_number BIGINT NOT NULL,
  deleted BOOLEAN DEFAULT FALSE NOT NULL, writer VARCHAR(255) NOT NULL, write_timestamp BIGINT,
  adapter_manifest VARCHAR(255), event_ser_id INTEGER NOT NULL, event_ser_manifest VARCHAR(255) NOT NULL,
  event_payload BYTEA NOT NULL, meta_ser_id INTEGER, meta_ser_manifest VARCHAR(255), meta_payload BYTEA,
  PRIMARY KEY(persistence_id, sequence_number));
CREATE UNIQUE INDEX event_journal_ordering_idx ON event_journal(ordering);
CREATE TABLE event_tag(
  event_id BIGINT, tag VARCHAR(256), PRIMARY KEY(event_id, tag),
  CONSTRAINT fk_event_journal FOREIGN KEY(event_id) REFERENCES event_journal(ordering) ON DELETE CASCADE);
CREATE TABLE state_snapshot(
  persistence_id VARCHAR(255) NOT NULL, sequence_number BIGINT NOT NULL, created BIGINT NOT NULL,
  snapshot_ser_id INTEGER NOT NULL, snapshot_ser_manifest VARCHAR(255) NOT NULL,
  snapshot_payload BYTEA NOT NULL,
  meta_ser_id INTEGER, meta_ser_manifest VARCHAR(255), meta_payload BYTEA,
  PRIMARY KEY(persistence_id, sequence_number));
CREATE TABLE read_side_offsets(
  projection_name VARCHAR(255) NOT NULL, projection_key VARCHAR(255) NOT NULL,
  current_offset VARCHAR(255) NOT NULL, manifest VARCHAR(4) NOT NULL, mergeable BOOLEAN NOT NULL,
  last_updated BIGINT NOT NULL, PRIMARY KEY(projection_name, projection_key));
CREATE INDEX projection_name_index ON read_side_offsets (projection_name);
CREATE TABLE read_sides(
  projection_name VARCHAR(255) NOT NULL, projection_key VARCHAR(255) NOT NULL, paused BOOLEAN NOT NULL,
  last_updated BIGINT NOT NULL, PRIMARY KEY(projection_name, projection_key));
CREATE TABLE cos_migrations(version_number INT PRIMARY KEY NOT NULL, upgraded_at BIGINT, is_snapshot BOOLEAN);
"""


def packed(message: Message) -> AnyProto:
    value = AnyProto()
    value.Pack(message)
    return value


def account_history(entity: str, balances: list[int]) -> list[EventWrapper]:
    wrappers = []
    for revision, balance in enumerate(balances, start=1):
        event = (
            bank_pb2.AccountOpened(account_id=entity, owner="Up", balance=balance)
            if revision == 1
            else (bank_pb2.MoneyDeposited(amount=balance - balances[revision - 2]))
        )
        meta = MetaData(
            entity_id=entity,
            revision_number=revision,
            revision_date=Timestamp(seconds=1_700_000_000 + revision),
        )
        state = bank_pb2.BankAccount(account_id=entity, owner="Up", balance=balance)
        wrappers.append(EventWrapper(event=packed(event), resulting_state=packed(state), meta=meta))
    return wrappers


def write_upstream_database(server: PgServer, database: str) -> None:
    now = int(time.time() * 1000)
    with psycopg.connect(server.dsn(database), autocommit=True) as connection:
        connection.execute(UPSTREAM_SCHEMA)
        connection.execute("INSERT INTO cos_migrations VALUES (6, %s, true)", (now,))
        for entity, balances in (("up-1", [100, 150, 175]), ("up-2", [10, 20, 30, 40, 50])):
            for wrapper in account_history(entity, balances):
                ordering = connection.execute(
                    "INSERT INTO event_journal (persistence_id, sequence_number, writer, write_timestamp,"
                    " adapter_manifest, event_ser_id, event_ser_manifest, event_payload)"
                    " VALUES (%s, %s, 'akka-writer', %s, '', 5001, 'chief_of_state.v1.EventWrapper', %s)"
                    " RETURNING ordering",
                    (entity, wrapper.meta.revision_number, now, wrapper.SerializeToString()),
                ).fetchone()
                assert ordering is not None
                connection.execute(
                    "INSERT INTO event_tag VALUES (%s, %s)", (ordering[0], str(shard_of(entity, 16)))
                )
        # up-2 also has a snapshot at revision 4, newer rows after it
        snapshot = StateWrapper(state=account_history("up-2", [10, 20, 30, 40])[-1].resulting_state)
        snapshot.meta.CopyFrom(account_history("up-2", [10, 20, 30, 40])[-1].meta)
        connection.execute(
            "INSERT INTO state_snapshot VALUES ('up-2', 4, %s, 5001, 'chief_of_state.v1.StateWrapper', %s)",
            (now, snapshot.SerializeToString()),
        )
        connection.execute(
            "INSERT INTO read_side_offsets VALUES ('accounts', '3', '7', 'SEQ', false, %s)", (now,)
        )


async def test_an_upstream_database_is_served_and_continued(
    tmp_path: Path, bank_handler: Process, pg_database: tuple[PgServer, str]
) -> None:
    server, database = pg_database
    write_upstream_database(server, database)
    env = node_environment({**base_env(bank_handler.ports["grpc"]), **postgres_env(server, database)})
    node = start_node(env, tmp_path / "logs")
    try:
        async with aio.insecure_channel(f"127.0.0.1:{node.ports['grpc']}") as channel:
            cos = ChiefOfStateServiceStub(channel)  # type: ignore[no-untyped-call]
            up1 = await cos.GetState(pb.GetStateRequest(entity_id="up-1"), timeout=10)
            assert up1.meta.revision_number == 3 and bank.account_from_any(up1.state).balance == 175
            assert up1.meta.revision_date.seconds == 1_700_000_003
            up2 = await cos.GetState(pb.GetStateRequest(entity_id="up-2"), timeout=10)
            assert up2.meta.revision_number == 5 and bank.account_from_any(up2.state).balance == 50
            continued = await cos.ProcessCommand(
                pb.ProcessCommandRequest(entity_id="up-1", command=bank.deposit(25)), timeout=10
            )
            assert (
                continued.meta.revision_number == 4 and bank.account_from_any(continued.state).balance == 200
            )
    finally:
        assert node.stop() == 0
    with psycopg.connect(server.dsn(database)) as connection:
        versions = [
            row[0] for row in connection.execute("SELECT version_number FROM cos_migrations ORDER BY 1")
        ]
        assert versions[0] == 6 and versions[-1] >= 7
        row = connection.execute(
            "SELECT event_ser_id, event_ser_manifest, adapter_manifest, t.tag FROM event_journal j"
            " JOIN event_tag t ON t.event_id = j.ordering"
            " WHERE persistence_id = 'up-1' AND sequence_number = 4"
        ).fetchone()
        assert row == (5001, "chief_of_state.v1.EventWrapper", "", str(shard_of("up-1", 16)))
        offsets = connection.execute("SELECT current_offset FROM read_side_offsets").fetchall()
        assert offsets == [("7",)]
