"""The journal read back from the store as `tests.support.history.check` wants it: per entity, the
(revision, token) of every stored event.

Rows are read straight from `event_journal` (docs/contract.md §4.2): `sequence_number` is the revision
and `event_payload` a serialized `EventWrapper` (serializer 5001, §4.3) whose event is one of the bank's.
The token is what the load generator (tests/support/load.py) put in the command and the bank copied into
the event: the owner of `AccountOpened`, the reference of `MoneyDeposited`. Other events, and deposits
made without a reference, have no token (None).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import psycopg
from chiefofstate_examples.bank.gen.bank.v1 import bank_pb2

from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.ports.journal import EVENT_MANIFEST, SERIALIZER_ID

Journal = dict[str, list[tuple[int, str | None]]]

_QUERY = (
    "SELECT persistence_id, sequence_number, event_ser_id, event_ser_manifest, event_payload "
    "FROM {table} ORDER BY persistence_id, sequence_number"
)


def token_of(payload: bytes) -> str | None:
    """The token in one stored `EventWrapper`, or None when its event carries none."""
    wrapper = EventWrapper()
    wrapper.ParseFromString(payload)
    opened = bank_pb2.AccountOpened()
    if wrapper.event.Unpack(opened):
        return opened.owner or None
    deposited = bank_pb2.MoneyDeposited()
    if wrapper.event.Unpack(deposited):
        return deposited.reference or None
    return None


def _journal(rows: Iterable[tuple[str, int, int, str, bytes]], prefix: str) -> Journal:
    journal: Journal = defaultdict(list)
    for entity, revision, serializer, manifest, payload in rows:
        if not entity.startswith(prefix):
            continue
        if serializer != SERIALIZER_ID or manifest != EVENT_MANIFEST:
            # The checker would take an unreadable row for an event without a token; say so instead.
            raise ValueError(
                f"event_journal row ({entity!r}, {revision}) has serializer {serializer} {manifest!r}"
            )
        journal[entity].append((int(revision), token_of(bytes(payload))))
    return dict(journal)


def read_sqlite(path: str | Path, prefix: str = "") -> Journal:
    """Entities whose id starts with `prefix` from a SQLite store. Opened read-write on purpose: after a
    kill -9 the file's write-ahead log must be replayed to see what was committed, as a node would."""
    connection = sqlite3.connect(Path(path), timeout=30)
    try:
        return _journal(connection.execute(_QUERY.format(table="event_journal")), prefix)
    finally:
        connection.close()


def read_postgres(dsn: str, schema: str = "public", prefix: str = "") -> Journal:
    with psycopg.connect(dsn, connect_timeout=10) as connection:
        table = f'"{schema}".event_journal'
        rows = connection.execute(_QUERY.format(table=table)).fetchall()
    return _journal(rows, prefix)


def read_journal(store_env: Mapping[str, str], prefix: str = "") -> Journal:
    """The journal of the store a node was started with: the `COS_DB_*` variables it was given
    (PostgreSQL when `COS_DB_HOST` is set, else the SQLite file `COS_DB_PATH`, docs/contract.md §10.2)."""
    if store_env.get("COS_DB_HOST"):
        return read_postgres(_dsn(store_env), store_env.get("COS_DB_SCHEMA", "public"), prefix)
    return read_sqlite(store_env.get("COS_DB_PATH", "cos.db"), prefix)


def read_write_times_ms(store_env: Mapping[str, str], prefix: str = "") -> list[int]:
    """The `write_timestamp` (epoch milliseconds, the writing node's wall clock) of every event of the
    entities whose id starts with `prefix`, in no particular order."""
    query = "SELECT persistence_id, write_timestamp FROM {table}"
    if store_env.get("COS_DB_HOST"):
        with psycopg.connect(_dsn(store_env), connect_timeout=10) as connection:
            table = f'"{store_env.get("COS_DB_SCHEMA", "public")}".event_journal'
            rows = connection.execute(query.format(table=table)).fetchall()
    else:
        database = sqlite3.connect(Path(store_env.get("COS_DB_PATH", "cos.db")), timeout=30)
        try:
            rows = database.execute(query.format(table="event_journal")).fetchall()
        finally:
            database.close()
    return [int(stamp) for entity, stamp in rows if entity.startswith(prefix) and stamp is not None]


def _dsn(store_env: Mapping[str, str]) -> str:
    user = store_env.get("COS_DB_USER", "postgres")
    password = store_env.get("COS_DB_PASSWORD", "changeme")  # the node's defaults
    host, port = store_env["COS_DB_HOST"], store_env.get("COS_DB_PORT", "5432")
    return f"postgresql://{user}:{password}@{host}:{port}/{store_env.get('COS_DB_NAME', 'postgres')}"
