"""The node's subscription registry and fan-out (docs/contract.md §7, decision D8).

The hub is told of each commit, by the command processor on a node alone or by the journal feed in a
cluster (subscription/feed.py), and appends the command's events to the buffer of every matching
subscription and returns at once. Nothing a subscriber does can slow a command: each event is
serialized once for all subscribers (a subscriber's message is its own id's bytes followed by the
event's), writes start through a gate that leaves commands a share of every turn of the event loop
(turns.py), and a subscriber that does not keep up is ended with RESOURCE_EXHAUSTED instead of being
waited for, by either of two bounds, whatever the transport buffers:

* more than `buffer_size` events not yet written into its stream (buffered, or being written);
* one write that has not completed after `write_timeout_s` (its client stopped reading and the
  HTTP/2 flow-control window is full).

Two counts matter and are kept apart. `live` subscriptions receive events and own their id (a
new subscription may reuse the id as soon as the old one stops receiving). `open_streams` counts
streams whose handler has not finished yet, including ended ones still flushing their final status
to a client that does not read; COS_SUBSCRIPTION_MAX bounds that count, so ended-but-unread
streams cannot pile up beyond the limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from chiefofstate.core.errors import AlreadyExists, CosError, ResourceExhausted, Unavailable
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.subscription.turns import TurnGate

log = logging.getLogger("chiefofstate.subscription")

DEFAULT_WRITE_TIMEOUT_S = 10.0


def message_body(wrapper: EventWrapper) -> bytes:
    """The part of `SubscribeResponse` / `SubscribeAllResponse` (same field numbers) that every
    subscriber shares: fields 2-4. A message is its subscriber's field 1 followed by this."""
    return pb.SubscribeAllResponse(
        event=wrapper.event, resulting_state=wrapper.resulting_state, meta=wrapper.meta
    ).SerializeToString()


class Subscription:
    """One subscriber's bounded buffer; `entity_id` None means every entity (SubscribeAll)."""

    def __init__(self, subscription_id: str, entity_id: str | None, capacity: int) -> None:
        self.subscription_id = subscription_id
        self.entity_id = entity_id
        self.capacity = capacity
        # Field 1 of the subscriber's messages; protobuf allows the fields of a message in any split.
        self.prefix = pb.SubscribeAllResponse(subscription_id=subscription_id).SerializeToString()
        self._buffer: deque[bytes] = deque()
        self._unwritten = 0  # offered and not yet written into the stream: buffered or being written
        self._wakeup = asyncio.Event()
        self._finished = False
        self._failure: CosError | None = None
        self._released = False
        self.writing_since: float | None = None  # loop time the current write started
        self.writer: asyncio.Task[object] | None = None
        self.timed_out = False
        self._watch_due = False

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def failure(self) -> CosError | None:
        return self._failure

    @property
    def unwritten(self) -> int:
        return self._unwritten

    def _offer(self, bodies: Sequence[bytes]) -> bool:
        """False when the events do not fit: the subscriber has fallen behind."""
        if self._unwritten + len(bodies) > self.capacity:
            return False
        self._buffer.extend(bodies)
        self._unwritten += len(bodies)
        self._wakeup.set()
        return True

    def _finish(self, failure: CosError | None) -> None:
        """None completes the stream normally (unsubscribe); undelivered events are dropped."""
        if self._finished:
            return
        self._finished = True
        self._failure = failure
        self._buffer.clear()
        self._wakeup.set()

    def wrote(self) -> None:
        """One event is in the stream now."""
        self._unwritten -= 1
        self.writing_since = None

    async def take(self) -> list[bytes]:
        """Every buffered event body, waiting for at least one; [] once the subscription was completed
        normally; raises the failure that ended it otherwise. Taken events still count as unwritten
        until `wrote` says so."""
        while True:
            if self._finished:
                if self._failure is not None:
                    raise self._failure
                return []
            if self._buffer:
                bodies = list(self._buffer)
                self._buffer.clear()
                return bodies
            self._wakeup.clear()
            await self._wakeup.wait()


class EventSource(Protocol):
    """Where a cluster member's events come from (the journal feed): read only while it has subscribers."""

    async def activate(self) -> None: ...

    def pause(self) -> None: ...

    @property
    def reads(self) -> int:
        """Journal reads made so far."""
        ...


class SubscriptionHub:
    """Registry of the node's subscriptions; implements the CommitListener protocol."""

    def __init__(
        self,
        buffer_size: int,
        max_streams: int,
        *,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
        gate: TurnGate | None = None,
    ) -> None:
        self._buffer_size = buffer_size
        self._max_streams = max_streams
        self.write_timeout_s = write_timeout_s
        self.gate = gate or TurnGate()
        self._live: dict[str, Subscription] = {}
        self._all_entities: dict[str, Subscription] = {}
        self._by_entity: dict[str, dict[str, Subscription]] = {}
        self._open_streams = 0
        self._closed = False
        self.overflows = 0  # subscribers ended for falling behind, by either bound
        # cluster mode: the journal feed, started by the first subscriber and paused after the last
        self.source: EventSource | None = None

    @property
    def live(self) -> int:
        return len(self._live)

    @property
    def open_streams(self) -> int:
        return self._open_streams

    def open(self, subscription_id: str, entity_id: str | None) -> Subscription:
        """Register at once, so every event committed after this call reaches the subscriber.

        The caller must `release` the subscription when its stream ends, however it ends.
        """
        if self._closed:
            raise Unavailable("the node is shutting down; subscribe on another node")
        if subscription_id in self._live:
            # Decision D8: upstream silently replaces the entry and loses track of the first stream.
            raise AlreadyExists(
                f"subscription {subscription_id} is already active; "
                "unsubscribe it first or choose another subscription_id"
            )
        if self._open_streams >= self._max_streams:
            raise ResourceExhausted(
                f"too many subscriptions on this node (limit {self._max_streams}, COS_SUBSCRIPTION_MAX)"
            )
        subscription = Subscription(subscription_id, entity_id, self._buffer_size)
        self._live[subscription_id] = subscription
        if entity_id is None:
            self._all_entities[subscription_id] = subscription
        else:
            self._by_entity.setdefault(entity_id, {})[subscription_id] = subscription
        self._open_streams += 1
        return subscription

    async def ready(self) -> None:
        """Called after `open`, before the subscriber is told it is subscribed: once this returns, every
        event committed afterwards reaches it (the journal feed has started, if it was paused)."""
        if self.source is not None:
            await self.source.activate()

    def release(self, subscription: Subscription) -> None:
        """The stream has ended (completed, failed or cancelled by the client); idempotent."""
        if subscription._released:
            return
        subscription._released = True
        self._end(subscription, None)
        self._open_streams -= 1

    def unsubscribe(self, subscription_id: str) -> bool:
        """Complete the subscription's stream with OK (decision D8); False if no such subscription."""
        subscription = self._live.get(subscription_id)
        if subscription is None:
            return False
        self._end(subscription, None)
        return True

    def on_committed(self, entity_id: str, shard: int, events: Sequence[EventWrapper]) -> None:
        if not self._live:
            return
        watchers = self._by_entity.get(entity_id)
        if not self._all_entities and not watchers:
            return
        targets = list(self._all_entities.values())
        if watchers:
            targets.extend(watchers.values())
        bodies = [message_body(wrapper) for wrapper in events]  # once, whatever the number of targets
        for subscription in targets:
            if not subscription._offer(bodies):
                self._fell_behind(
                    subscription,
                    f"more than {subscription.capacity} events were waiting to be sent "
                    "(COS_SUBSCRIPTION_BUFFER_SIZE)",
                )

    async def before_write(self, subscription: Subscription) -> None:
        """Called by the stream's writer before each write: waits for the turn gate, then watches the
        write so that one blocked for longer than `write_timeout_s` ends the subscription and
        cancels its writer (which then ends the stream with the subscription's failure).

        The writer's loop does the same in two plain calls when the gate has a pass free
        (`gate.try_pass()`, then `writing`), and awaits `gate.wait()` only when it has not: this runs
        once per event and subscriber."""
        if not self.gate.try_pass():
            await self.gate.wait()
        self.writing(subscription)

    def writing(self, subscription: Subscription) -> None:
        """A write into the subscriber's stream starts now; see before_write."""
        loop = asyncio.get_running_loop()
        subscription.writing_since = now = loop.time()
        if not subscription._watch_due:
            # One timer per subscription at a time, not one per write.
            subscription._watch_due = True
            loop.call_at(now + self.write_timeout_s, self._watch, subscription)

    def _watch(self, subscription: Subscription) -> None:
        subscription._watch_due = False
        since = subscription.writing_since
        if since is None or subscription._released or subscription.timed_out:
            return
        loop = asyncio.get_running_loop()
        due = since + self.write_timeout_s
        if loop.time() < due:  # a later write than the one this timer was set for
            subscription._watch_due = True
            loop.call_at(due, self._watch, subscription)
            return
        subscription.timed_out = True
        self._fell_behind(
            subscription,
            f"a write waited more than {self.write_timeout_s:g}s for the client to read "
            "(COS_SUBSCRIPTION_WRITE_TIMEOUT)",
        )
        if subscription.writer is not None:
            subscription.writer.cancel()

    def _fell_behind(self, subscription: Subscription, why: str) -> None:
        if subscription.finished:
            return
        self.overflows += 1
        log.warning("subscription %s fell behind: %s; ending it", subscription.subscription_id, why)
        self._end(
            subscription,
            ResourceExhausted(
                f"subscription {subscription.subscription_id} fell behind: {why}; subscribe again "
                "and read the current state with GetState"
            ),
        )

    def close(self) -> None:
        """Node shutdown: refuse new subscriptions and end every stream so none holds the server."""
        self._closed = True
        for subscription in list(self._live.values()):
            self._end(subscription, Unavailable("the node is shutting down; subscribe again"))

    def _end(self, subscription: Subscription, failure: CosError | None) -> None:
        subscription._finish(failure)
        subscription_id = subscription.subscription_id
        if self._live.get(subscription_id) is not subscription:
            return
        del self._live[subscription_id]
        if subscription.entity_id is None:
            del self._all_entities[subscription_id]
        else:
            watchers = self._by_entity[subscription.entity_id]
            del watchers[subscription_id]
            if not watchers:
                del self._by_entity[subscription.entity_id]
        if not self._live and self.source is not None:
            self.source.pause()  # nobody left to hand events to: stop reading the journal
