from typing import Any

from chiefofstate.api.cos_service import COS_SERVICE_NAME, ChiefOfStateService, add_to_server
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb


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
