"""Which command wrote a recent event, as a span context, so a read side's delivery of the event joins
that command's trace (docs/operations.md, "Tracing").

Read sides deliver events after the command has been answered, from rows read back from the journal, so
the command's trace context would otherwise be lost. The commit listener below remembers the context
of the span that appended each event, keyed by (entity id, revision), in a bounded map in memory; a
delivery looks it up and makes its span a child of that span. Events delivered long after their
command (a replay, a read side that was behind by more than the map holds, a node restarted in
between) start a trace of their own, as every delivery did before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext

from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper

DEFAULT_CAPACITY = 10_000


class CommandTraces:
    """A `CommitListener`: the span context current at each commit, for the newest `capacity` events."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._contexts: OrderedDict[tuple[str, int], SpanContext] = OrderedDict()

    def __len__(self) -> int:
        return len(self._contexts)

    def on_committed(self, entity_id: str, shard: int, events: Sequence[EventWrapper]) -> None:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return
        contexts = self._contexts
        for event in events:
            contexts[(entity_id, event.meta.revision_number)] = context
        while len(contexts) > self._capacity:
            contexts.popitem(last=False)

    def parent_of(self, entity_id: str, revision: int) -> Context | None:
        """The context to start the delivery span in: under the span that appended the event."""
        context = self._contexts.get((entity_id, revision))
        if context is None:
            return None
        return trace.set_span_in_context(NonRecordingSpan(context))
