from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.telemetry.command_traces import CommandTraces


def event(revision: int) -> EventWrapper:
    return EventWrapper(meta=MetaData(revision_number=revision))


def test_a_delivery_starts_under_the_span_that_appended_its_event_while_it_is_remembered() -> None:
    tracer = TracerProvider().get_tracer("test")
    traces = CommandTraces(capacity=2)
    with tracer.start_as_current_span("Entity.persistEventAndReply") as persist:
        traces.on_committed("a", 3, [event(1), event(2)])
    with tracer.start_as_current_span("Entity.persistEventAndReply"):
        traces.on_committed("b", 5, [event(1)])

    assert len(traces) == 2  # the bound is reached: the oldest event ("a", 1) is forgotten
    assert traces.parent_of("a", 1) is None
    parent = traces.parent_of("a", 2)
    assert parent is not None
    with tracer.start_as_current_span("ReadSideHandler.HandleEvent", context=parent) as delivery:
        appended = persist.get_span_context()
        assert delivery.get_span_context().trace_id == appended.trace_id
        assert delivery.parent is not None and delivery.parent.span_id == appended.span_id


def test_nothing_is_remembered_outside_a_span() -> None:
    traces = CommandTraces()
    assert not trace.get_current_span().get_span_context().is_valid
    traces.on_committed("c", 0, [event(1)])
    assert len(traces) == 0 and traces.parent_of("c", 1) is None
