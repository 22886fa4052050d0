"""The node's subscription registry and fan-out (docs/contract.md §7, decision D8).

The hub is told of each commit, by the command processor on a node alone or by the journal feed in a
cluster (subscription/feed.py), and appends the command's events to the buffer of every matching
subscription and returns at once. Nothing a subscriber does
can slow a command: each buffer is bounded, and a subscription whose buffer is full is ended with
RESOURCE_EXHAUSTED instead of being waited for.

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

from chiefofstate.core.errors import AlreadyExists, CosError, ResourceExhausted, Unavailable
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper

log = logging.getLogger("chiefofstate.subscription")


class Subscription:
    """One subscriber's bounded buffer; `entity_id` None means every entity (SubscribeAll)."""

    def __init__(self, subscription_id: str, entity_id: str | None, capacity: int) -> None:
        self.subscription_id = subscription_id
        self.entity_id = entity_id
        self.capacity = capacity
        self._buffer: deque[EventWrapper] = deque()
        self._wakeup = asyncio.Event()
        self._finished = False
        self._failure: CosError | None = None
        self._released = False

    @property
    def finished(self) -> bool:
        return self._finished

    def _offer(self, events: Sequence[EventWrapper]) -> bool:
        """False when the events do not fit: the subscriber has fallen behind."""
        if len(self._buffer) + len(events) > self.capacity:
            return False
        self._buffer.extend(events)
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

    async def take(self) -> list[EventWrapper]:
        """Every buffered event, waiting for at least one; [] once the subscription was completed
        normally; raises the failure that ended it otherwise."""
        while True:
            if self._finished:
                if self._failure is not None:
                    raise self._failure
                return []
            if self._buffer:
                events = list(self._buffer)
                self._buffer.clear()
                return events
            self._wakeup.clear()
            await self._wakeup.wait()


class SubscriptionHub:
    """Registry of the node's subscriptions; implements the CommitListener protocol."""

    def __init__(self, buffer_size: int, max_streams: int) -> None:
        self._buffer_size = buffer_size
        self._max_streams = max_streams
        self._live: dict[str, Subscription] = {}
        self._all_entities: dict[str, Subscription] = {}
        self._by_entity: dict[str, dict[str, Subscription]] = {}
        self._open_streams = 0
        self._closed = False
        self.overflows = 0

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
        targets = list(self._all_entities.values())
        if watchers:
            targets.extend(watchers.values())
        for subscription in targets:
            if not subscription._offer(events):
                self.overflows += 1
                log.warning(
                    "subscription %s fell behind (%d events buffered); ending it",
                    subscription.subscription_id,
                    subscription.capacity,
                )
                self._end(
                    subscription,
                    ResourceExhausted(
                        f"subscription {subscription.subscription_id} fell behind: more than "
                        f"{subscription.capacity} events were waiting to be sent "
                        "(COS_SUBSCRIPTION_BUFFER_SIZE); subscribe again and read the current "
                        "state with GetState"
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
            return
        watchers = self._by_entity[subscription.entity_id]
        del watchers[subscription_id]
        if not watchers:
            del self._by_entity[subscription.entity_id]
