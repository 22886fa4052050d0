"""Subscribe, SubscribeAll, Unsubscribe and UnsubscribeAll over gRPC (docs/contract.md §7, decision D8)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import grpc
from grpc import aio

from chiefofstate.api.grpc_errors import abort_with
from chiefofstate.core.command_rules import validate_entity_id
from chiefofstate.core.errors import CosError, InvalidArgument
from chiefofstate.core.headers import Metadata
from chiefofstate.core.limits import clip, validate_subscription_id
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.subscription.hub import SubscriptionHub
from chiefofstate.telemetry.tracing import SPAN_SUBSCRIBE, SPAN_SUBSCRIBE_ALL, TRACING_OFF, Tracing

SUBSCRIPTIONS_OFF = "Subscription is not enabled; configure subscription to use streaming"
# Sent in the stream's initial metadata once the subscription is registered: a client that waits
# for it knows every event committed from then on will reach it.
SUBSCRIPTION_ID_HEADER = "subscription-id"

Context = aio.ServicerContext[object, object]
# Ends a subscription on the other members of the cluster (cluster/peers.py); None on a node alone and
# on the internal port, which only ever acts locally.
# (subscription id, the caller's metadata: its credentials go along, as on a forwarded request)
UnsubscribeElsewhere = Callable[[str, Metadata], Awaitable[None]]


class SubscriptionRpcs:
    """`hub` is None when COS_SUBSCRIPTION_ENABLED is false: every rpc answers UNIMPLEMENTED."""

    def __init__(
        self,
        hub: SubscriptionHub | None,
        elsewhere: UnsubscribeElsewhere | None = None,
        tracing: Tracing = TRACING_OFF,
    ) -> None:
        self._hub = hub
        self._elsewhere = elsewhere
        self._tracing = tracing

    async def _enabled_hub(self, context: Context) -> SubscriptionHub:
        if self._hub is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, SUBSCRIPTIONS_OFF)
            raise AssertionError("abort raises")
        return self._hub

    async def subscribe(self, request: pb.SubscribeRequest, context: Context) -> None:
        await self._stream(context, request.entity_id, request.subscription_id)

    async def subscribe_all(self, request: pb.SubscribeAllRequest, context: Context) -> None:
        await self._stream(context, None, request.subscription_id)

    async def unsubscribe(self, subscription_id: str, context: Context) -> str:
        """Both unsubscribe rpcs end either kind of subscription, on whichever member holds it; an unknown
        id still succeeds (§7). Answered once every reachable member has ended it."""
        hub = await self._enabled_hub(context)
        try:
            if not subscription_id:
                raise InvalidArgument("subscription_id is required")
            validate_subscription_id(subscription_id)
        except CosError as error:
            await abort_with(context, error)
        hub.unsubscribe(subscription_id)
        if self._elsewhere is not None:
            # Also when it was found here: ids are unique per member only, so another may hold it too.
            await self._elsewhere(subscription_id, tuple(context.invocation_metadata() or ()))
        return subscription_id

    async def _stream(self, context: Context, entity_id: str | None, requested_id: str) -> None:
        # The reader/writer API rather than an async generator: a client that cancels or
        # disconnects then interrupts this coroutine itself, so `release` runs at once instead of
        # whenever the abandoned generator is finalized.
        hub = await self._enabled_hub(context)
        # upstream's span of the rpc: the subscription's registration, not the stream's whole life
        registering = self._tracing.span(
            SPAN_SUBSCRIBE if entity_id is not None else SPAN_SUBSCRIBE_ALL,
            attributes={"cos.entity_id": clip(entity_id)} if entity_id else None,
        )
        registering.__enter__()
        try:
            if entity_id == "":
                raise InvalidArgument("entity_id is required")
            if entity_id is not None:
                validate_entity_id(entity_id)
            validate_subscription_id(requested_id)
            subscription = hub.open(requested_id or str(uuid.uuid4()), entity_id)
        except CosError as error:
            registering.__exit__(type(error), error, None)
            await abort_with(context, error)
            raise
        subscription.writer = asyncio.current_task()
        # Looked up once: the loop below runs once per event and subscriber.
        gate, writing, write = hub.gate, hub.writing, context.write
        prefix, wrote = subscription.prefix, subscription.wrote
        try:
            try:
                await hub.ready()  # events committed from here on reach it, wherever they were written
                await context.send_initial_metadata(((SUBSCRIPTION_ID_HEADER, subscription.subscription_id),))
            except BaseException as error:
                registering.__exit__(type(error), error, None)
                raise
            registering.__exit__(None, None, None)
            while True:
                bodies = await subscription.take()
                if not bodies:
                    return  # unsubscribed: the stream completes with OK (decision D8)
                for body in bodies:
                    if subscription.finished:
                        break
                    # hub.before_write, without its coroutine when the gate has a pass free
                    if not gate.try_pass():
                        await gate.wait()
                    writing(subscription)
                    # Already serialized, once for every subscriber (registered without serializer).
                    await write(prefix + body)
                    wrote()
        except CosError as error:
            await _end_stream(context, error, hub.write_timeout_s)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not subscription.timed_out or task is None or subscription.failure is None:
                raise  # the client went away (or the node stops): nothing to tell
            task.uncancel()  # the hub's write timeout, not the client's cancellation
            await _end_stream(context, subscription.failure, hub.write_timeout_s)
        finally:
            hub.release(subscription)


async def _end_stream(context: Context, error: CosError, timeout_s: float) -> None:
    """End with `error`'s status. The status travels behind the messages already written, so to a client
    that does not read it cannot be delivered yet: after `timeout_s` the handler stops waiting and the
    stream is left to the transport, which sends the status if the client ever reads again."""
    try:
        async with asyncio.timeout(timeout_s):
            await abort_with(context, error)
    except TimeoutError:
        raise asyncio.CancelledError from None
