"""The ordering proof on PostgreSQL (decision D3): nothing skipped, nothing out of order per entity.

Two nodes write the same shards at once while a third node, which takes no commands, runs the read
side and learns of new events only through LISTEN/NOTIFY (its poll is 300 s). Meanwhile a direct SQL
transaction locks a shard, appends an event and commits a second later, after transactions that
started after it: the classic "late commit" that makes sequence-based projections skip events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.timestamp_pb2 import Timestamp

from chiefofstate.cli.processes import Process, start_bank_read_handler
from chiefofstate.core.sharding import shard_of
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.stores.postgres.journal import APPEND_CHANNEL
from tests.integration.conftest import NodeFactory
from tests.support.postgres import PgServer
from tests.support.readside_processes import (
    FAST,
    DeliveryLog,
    cos,
    no_gap_in_order,
    open_and_deposit,
    read_side,
    revision_of,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.parametrize("store_env", ["postgres"], indirect=True),
]

WRITERS_PER_NODE = 4
ENTITIES_PER_WRITER = 4
LATE_COMMIT_S = 1.0


@pytest.fixture
def deliveries(tmp_path: Path) -> DeliveryLog:
    return DeliveryLog(tmp_path / "deliveries.jsonl")


@pytest.fixture
def read_handler(tmp_path: Path, deliveries: DeliveryLog) -> Iterator[Process]:
    handler = start_bank_read_handler(tmp_path / "logs", deliveries=deliveries.path)
    yield handler
    handler.stop()


def writer(node: Process, entities: list[str], stop: threading.Event, errors: list[BaseException]) -> None:
    opened, stub = cos(node)
    with opened:
        while not stop.is_set():
            for entity_id in entities:
                try:
                    open_and_deposit(stub, entity_id, deposits=1)
                except grpc.RpcError as error:
                    if error.code() is grpc.StatusCode.UNAVAILABLE and "nothing was written" in str(
                        error.details()  # type: ignore[attr-defined]
                    ):
                        # a shard moving between the two members: retried, as the answer tells a user to
                        time.sleep(0.1)
                        continue
                    errors.append(error)
                    return


def late_commit(dsn: str, entity_id: str, started: threading.Event, outcome: dict[str, float]) -> None:
    """Append one event as the journal does (shard lock first, then ordering), commit a second later."""
    shard = shard_of(entity_id, 16)
    state = AnyProto()
    state.Pack(bank_pb2.BankAccount(account_id=entity_id, owner="late", balance=1))
    event = AnyProto()
    event.Pack(bank_pb2.AccountOpened(account_id=entity_id, owner="late", balance=1))
    wrapper = EventWrapper(
        event=event,
        resulting_state=state,
        meta=MetaData(
            entity_id=entity_id, revision_number=1, revision_date=Timestamp(seconds=int(time.time()))
        ),
    )
    with psycopg.connect(dsn) as connection, connection.transaction():
        connection.execute("SELECT shard FROM cos_shard_locks WHERE shard = %s FOR UPDATE", (shard,))
        ordering = connection.execute(
            "INSERT INTO event_journal (persistence_id, sequence_number, deleted, writer, write_timestamp, "
            "adapter_manifest, event_ser_id, event_ser_manifest, event_payload) "
            "VALUES (%s, 1, FALSE, 'sql', 0, '', 5001, 'chief_of_state.v1.EventWrapper', %s) "
            "RETURNING ordering",
            (entity_id, wrapper.SerializeToString()),
        ).fetchone()
        assert ordering is not None
        connection.execute("INSERT INTO event_tag (event_id, tag) VALUES (%s, %s)", (ordering[0], str(shard)))
        connection.execute("SELECT pg_notify(%s, %s)", (APPEND_CHANNEL, str(shard)))
        started.set()
        time.sleep(LATE_COMMIT_S)  # transactions that start now on other shards commit before this one
    outcome["ordering"] = ordering[0]
    outcome["committed_at"] = time.time()


def test_concurrent_writers_and_late_commits_never_make_a_projection_skip_or_reorder(
    node_factory: NodeFactory,
    read_handler: Process,
    deliveries: DeliveryLog,
    pg_database: tuple[PgServer, str],
) -> None:
    server, database = pg_database
    writing = [node_factory(), node_factory()]
    projecting = node_factory(
        **{**FAST, "COS_READ_SIDE_POLL_INTERVAL": "300s"},  # wake-ups come from the other nodes' NOTIFY
        **read_side("proof", read_handler.ports["read_side"]),
    )
    stop = threading.Event()
    errors: list[BaseException] = []
    assignments: dict[str, Process] = {}
    threads = []
    for node_number, node in enumerate(writing):
        for writer_number in range(WRITERS_PER_NODE):
            entities = [f"n{node_number}-w{writer_number}-e{number}" for number in range(ENTITIES_PER_WRITER)]
            assignments.update(dict.fromkeys(entities, node))
            threads.append(threading.Thread(target=writer, args=(node, entities, stop, errors), daemon=True))
    assert len({shard_of(entity, 16) for entity in assignments}) >= 12  # both nodes write most shards
    for thread in threads:
        thread.start()
    late = [f"late-{number}" for number in range(3)]
    late_outcomes: list[dict[str, float]] = []
    time.sleep(0.5)
    for entity_id in late:
        started = threading.Event()
        late_outcomes.append({})
        committer = threading.Thread(
            target=late_commit, args=(server.dsn(database), entity_id, started, late_outcomes[-1])
        )
        committer.start()
        assert started.wait(10)
        time.sleep(0.2)
        committer.join(10)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert errors == []
    final: dict[str, int] = {entity: 1 for entity in late}
    for node in writing:
        opened, stub = cos(node)
        with opened:
            final.update(
                {entity: revision_of(stub, entity) for entity, owner in assignments.items() if owner is node}
            )
    stopped_writing = time.monotonic()
    deliveries.wait_until(
        lambda log: all(max(log.revisions("proof", e), default=0) == final[e] for e in final),
        timeout_s=120,
        what="every event at the projecting node",
    )
    catch_up_s = time.monotonic() - stopped_writing
    assert catch_up_s < 120  # far below the 300 s poll (however busy the machine): NOTIFY woke them
    duplicates = 0
    for entity, revision in final.items():
        revisions = deliveries.revisions("proof", entity)
        assert no_gap_in_order(revisions), f"{entity}: {revisions}"
        assert set(revisions) == set(range(1, revision + 1)), entity
        duplicates += len(revisions) - len(set(revisions))
    # The late commits really were late: events with a larger ordering reached the read handler first.
    with psycopg.connect(server.dsn(database)) as connection:
        orderings = {
            (entity, revision): ordering
            for entity, revision, ordering in connection.execute(
                "SELECT persistence_id, sequence_number, ordering FROM event_journal"
            ).fetchall()
        }
    for outcome in late_outcomes:
        overtaken = [
            delivery
            for delivery in deliveries.all("proof")
            if delivery.received_at < outcome["committed_at"]
            and orderings[(delivery.entity_id, delivery.revision)] > outcome["ordering"]
        ]
        assert overtaken, "no transaction committed past the late one; the test proves nothing"
    total = sum(final.values())
    assert projecting.alive()
    print(
        f"ordering proof: {total} events of {len(final)} entities, {duplicates} duplicates, "
        f"caught up {catch_up_s:.2f}s after the writers stopped"
    )
