"""The floor sends the write handler what the node sends, for new and for known entities alike
(docs/performance.md, "The floor and the echo server")."""

from __future__ import annotations

import time

from google.protobuf.any_pb2 import Any as AnyProto

from benchmarks.floor import FloorService
from benchmarks.messages import COMMAND, STATE
from chiefofstate.core.command_rules import initial_state, next_event_meta
from chiefofstate.entities.entity import EntityState
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import HandleCommandRequest


def handle_command(prior: tuple[AnyProto, MetaData]) -> bytes:
    state, meta = prior
    request = HandleCommandRequest(command=COMMAND, prior_state=state, prior_event_meta=meta)
    return request.SerializeToString(deterministic=True)


async def test_a_new_entity_gets_the_nodes_empty_prior_and_a_known_one_its_last_answer() -> None:
    floor = FloorService("127.0.0.1:1", 1)
    try:
        # The node's prior for an entity it has never seen: its recovered empty state, decoded.
        node_prior = EntityState.of_wrapper(initial_state("acc-1")).decode()
        assert handle_command(floor.prior("acc-1")) == handle_command((node_prior.state, node_prior.meta))
        assert len(handle_command(floor.prior("acc-1"))) < len(handle_command((STATE, node_prior.meta)))

        meta = next_event_meta(node_prior.meta, time.time_ns(), ())
        floor.remember("acc-1", pb.ProcessCommandResponse(state=STATE, meta=meta))
        assert floor.prior("acc-1") == (STATE, meta)
        assert floor.prior("acc-1")[1].revision_number == 1
    finally:
        await floor.close()


async def test_the_floor_keeps_a_bounded_number_of_entities() -> None:
    floor = FloorService("127.0.0.1:1", 1)
    floor.kept_entities = 3
    try:
        answer = pb.ProcessCommandResponse(state=STATE, meta=next_event_meta(initial_state("x").meta, 1, ()))
        for entity_id in ("a", "b", "c"):
            floor.remember(entity_id, answer)
        floor.prior("a")  # used again: "b" is now the least recently used
        floor.remember("d", answer)
        assert [floor.prior(e)[0] == STATE for e in ("a", "b", "c", "d")] == [True, False, True, True]
    finally:
        await floor.close()
