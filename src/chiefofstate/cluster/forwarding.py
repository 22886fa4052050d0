"""Requests for a shard this member does not serve go to the member that does.

The entry member sends the request on with the caller's headers and what is left of its deadline. A
member that turns out not to serve the shard (the route was stale: the shard moved between the last
read of the routing table and the call) answers "not here", and the request goes once more to the owner
the next refresh names. While a shard has no owner (its previous owner died and the lease has not yet
expired) a request waits up to COS_CLUSTER_UNOWNED_WAIT, then fails with UNAVAILABLE having written
nothing (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from opentelemetry.trace import SpanKind

from chiefofstate.cluster.peers import (
    GET_STATE,
    PROCESS_COMMAND,
    NotHere,
    PeerCalls,
    Unreachable,
    forwarded_metadata,
)
from chiefofstate.cluster.routes import Route, RoutingTable
from chiefofstate.core.errors import Unavailable
from chiefofstate.core.headers import Metadata
from chiefofstate.core.sharding import shard_of
from chiefofstate.entities.deadline import Deadline
from chiefofstate.entities.entity import EntityState
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.telemetry.metrics import NodeMetrics
from chiefofstate.telemetry.tracing import SPAN_FORWARD, TRACING_OFF, Tracing

# One re-route after a "not here": a route can be stale once; twice in a row means the shard is moving
# right now, and the caller is better told so than kept waiting.
_ATTEMPTS = 2


def state_of(reply: bytes) -> EntityState:
    """A forwarded reply as the entity's state, for callers that need more than its bytes (HTTP)."""
    # GetStateResponse and ProcessCommandResponse share field numbers (entities/entity.py).
    return EntityState(reply, revision_of(reply))


def revision_of(reply: bytes) -> int:
    return pb.GetStateResponse.FromString(reply).meta.revision_number


class Forwarder:
    """Sends a request on as bytes: the entry member reads only the entity id (for the shard) and
    passes the request it received, with the caller's headers, to the owner, whose reply bytes are the
    answer. The owner parses and checks the request as if the caller had called it directly."""

    def __init__(
        self,
        routes: RoutingTable,
        peers: PeerCalls,
        num_shards: int,
        unowned_wait_s: float,
        *,
        tracing: Tracing = TRACING_OFF,
        metrics: NodeMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._routes = routes
        self._peers = peers
        self.num_shards = num_shards
        self._unowned_wait_s = unowned_wait_s
        self._tracing = tracing
        self._metrics = metrics
        self._clock = clock

    async def process_command(
        self, entity_id: str, request: bytes, metadata: Metadata, deadline: Deadline
    ) -> bytes:
        """The owner's reply to the serialized ProcessCommandRequest `request` for `entity_id`."""

        def send(address: str, timeout_s: float) -> Awaitable[bytes]:
            outgoing = forwarded_metadata(metadata, self._tracing.inject())
            return self._peers.call(address, PROCESS_COMMAND, request, outgoing, timeout_s)

        shard = shard_of(entity_id, self.num_shards)
        return await self._forward("ProcessCommand", shard, send, deadline, idempotent=False)

    async def get_state(
        self, entity_id: str, request: bytes, metadata: Metadata, deadline: Deadline
    ) -> bytes:
        """The owner's reply to the serialized GetStateRequest `request` for `entity_id`."""

        def send(address: str, timeout_s: float) -> Awaitable[bytes]:
            outgoing = forwarded_metadata(metadata, self._tracing.inject())
            return self._peers.call(address, GET_STATE, request, outgoing, timeout_s)

        shard = shard_of(entity_id, self.num_shards)
        return await self._forward("GetState", shard, send, deadline, idempotent=True)

    async def _forward(
        self,
        rpc: str,
        shard: int,
        send: Callable[[str, float], Awaitable[bytes]],
        deadline: Deadline,
        *,
        idempotent: bool,
    ) -> bytes:
        give_up_at = min(self._clock() + self._unowned_wait_s, deadline.expires_at)
        attempts = 0
        while True:
            route = await self._owner(shard, give_up_at)
            started = time.perf_counter()
            # One client span per attempt, current while the request is sent: the owner's server span
            # is its child, so a forwarded command is one trace across both members.
            attempt = self._tracing.span(
                SPAN_FORWARD,
                kind=SpanKind.CLIENT,
                attributes={"cos.rpc": rpc, "cos.shard": shard, "cos.member": route.address},
            )
            try:
                with attempt:
                    reply = await send(route.address, deadline.check("before it could be forwarded"))
            except NotHere:
                self._routes.forget(shard, route)
                attempts += 1
                if attempts >= _ATTEMPTS:
                    raise Unavailable(
                        f"shard {shard} is moving between members; nothing was written, try again"
                    ) from None
                give_up_at = max(give_up_at, min(self._clock() + self._unowned_wait_s, deadline.expires_at))
                continue
            except Unreachable as unreachable:
                # The owner died or is cut off: another member takes the shard once its lease expires.
                # Wait for the table to name another owner, within the same bounded wait. A command
                # that may have reached the owner is not sent again: it could run twice.
                attempts += 1
                retry = idempotent or unreachable.never_sent
                if not retry or attempts >= _ATTEMPTS or self._clock() >= give_up_at:
                    raise unreachable.error from None
                await self._owner(shard, give_up_at, avoid=route)
                continue
            finally:
                if self._metrics is not None:
                    self._metrics.observe_forwarded(rpc, time.perf_counter() - started)
            return reply

    async def _owner(self, shard: int, give_up_at: float, avoid: Route | None = None) -> Route:
        """The route to the member serving the shard, waiting for the routing table to name one that
        is neither this member (which just refused it) nor `avoid` (a tenure found unreachable; the
        same address under a new token is a member restarted in place) until `give_up_at`."""
        while True:
            route = self._routes.owner(shard)
            if route is not None and route.address != self._routes.own_address and route != avoid:
                return route
            left = give_up_at - self._clock()
            if left <= 0:
                raise Unavailable(
                    f"shard {shard} has no member serving it yet (a member left or died and its lease "
                    "has not expired); nothing was written, try again"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._routes.refreshed(), left)
