"""The payloads every benchmark process exchanges, fixed so the node and the floor move the same bytes.

The write handler answers every command with one event of EVENT_BYTES and every event with a state of
STATE_BYTES; the load generator sends commands of COMMAND_BYTES. The floor and the echo server answer
with messages built from the same constants, so a size difference can never explain a ratio.
"""

from __future__ import annotations

import random
from typing import Final

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.timestamp_pb2 import Timestamp

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData

COMMAND_BYTES: Final = 32
EVENT_BYTES: Final = 64
STATE_BYTES: Final = 128
PAYLOAD_SEED: Final = 20_240_601

# Options of the node's gRPC server (api/grpc_server.py) and write-side channels
# (writeside/grpc.py): the floor processes use the same ones.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
SERVER_OPTIONS: Final = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]
CHANNEL_OPTIONS: Final = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.use_local_subchannel_pool", 1),
]
# What the node passes as COS_GRPC_CALLS_TIMEOUT by default (60 s): the floor sets the same deadline.
HANDLER_CALL_TIMEOUT_S: Final = 60.0


def _payload(size: int, salt: int) -> bytes:
    return random.Random(PAYLOAD_SEED + salt).randbytes(size)


COMMAND: Final = AnyProto(type_url="type.googleapis.com/bench.v1.Command", value=_payload(COMMAND_BYTES, 1))
EVENT: Final = AnyProto(type_url="type.googleapis.com/bench.v1.Event", value=_payload(EVENT_BYTES, 2))
STATE: Final = AnyProto(type_url="type.googleapis.com/bench.v1.State", value=_payload(STATE_BYTES, 3))
# A revision date like the ones the node stamps (seconds and nanoseconds both set).
REVISION_DATE: Final = Timestamp(seconds=1_750_000_000, nanos=123_456_789)


def meta_for(entity_id: str, revision: int) -> MetaData:
    """A meta of the size the node sends and answers (no headers are configured in the benchmark)."""
    return MetaData(entity_id=entity_id, revision_number=revision, revision_date=REVISION_DATE)
