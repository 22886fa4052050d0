from typing import Any

from chiefofstate.api.cos_service import COS_SERVICE_NAME, ChiefOfStateService, add_to_server
from chiefofstate.entities.entity import EntityState
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.telemetry.tracing import TRACING_OFF


class RecordingServer:
    def __init__(self) -> None:
        self.registered: dict[str, dict[str, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        assert len(handlers) == 1

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered[service] = handlers


def test_every_rpc_of_the_service_is_served_and_state_replies_go_out_as_cached_bytes() -> None:
    server = RecordingServer()
    add_to_server(ChiefOfStateService(commands=None), server)  # type: ignore[arg-type]
    handlers = server.registered[COS_SERVICE_NAME]
    descriptor = pb.DESCRIPTOR.services_by_name["ChiefOfStateService"]
    assert set(handlers) == {method.name for method in descriptor.methods}
    for method in descriptor.methods:
        handler = handlers[method.name]
        assert handler.response_streaming == method.server_streaming
        request = handler.request_deserializer(b"")
        assert request.DESCRIPTOR.full_name == method.input_type.full_name
    # the cached reply bytes are sent as they are: no serializer for the two state replies
    assert handlers["ProcessCommand"].response_serializer is None
    assert handlers["GetState"].response_serializer is None
    assert handlers["Unsubscribe"].response_serializer is not None


class Commands:
    """One entity at rest ("cached"); any other read goes through get_state."""

    forwards = False
    tracing = TRACING_OFF

    def __init__(self) -> None:
        self.full_reads: list[tuple[str, float | None]] = []

    def cached_state(self, entity_id: str) -> EntityState | None:
        return EntityState(b"cached reply", 4) if entity_id == "cached" else None

    async def get_state(self, entity_id: str, caller_left_s: float | None, metadata: Any = ()) -> EntityState:
        self.full_reads.append((entity_id, caller_left_s))
        return EntityState(b"read reply", 2)


class Context:
    def __init__(self) -> None:
        self.asked = 0

    def time_remaining(self) -> float:
        self.asked += 1
        return 3.0

    def invocation_metadata(self) -> tuple[()]:
        self.asked += 1
        return ()


async def test_a_get_state_of_an_entity_at_rest_asks_the_call_for_nothing() -> None:
    commands, context = Commands(), Context()
    service = ChiefOfStateService(commands)  # type: ignore[arg-type]
    assert await service.GetState(pb.GetStateRequest(entity_id="cached"), context) == b"cached reply"  # type: ignore[arg-type]
    assert context.asked == 0 and commands.full_reads == []
    assert await service.GetState(pb.GetStateRequest(entity_id="other"), context) == b"read reply"  # type: ignore[arg-type]
    assert commands.full_reads == [("other", 3.0)]  # the caller's deadline bounds the full read
