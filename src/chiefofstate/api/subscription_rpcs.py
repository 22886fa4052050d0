"""Subscribe, SubscribeAll, Unsubscribe and UnsubscribeAll over gRPC (docs/contract.md §7, decision D8)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

import grpc
from grpc import aio

from chiefofstate.api.grpc_errors import abort_with
from chiefofstate.core.command_rules import validate_entity_id
from chiefofstate.core.errors import CosError, InvalidArgument
from chiefofstate.core.limits import validate_subscription_id
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.persistence_pb2 import EventWrapper
from chiefofstate.subscription.hub import SubscriptionHub

SUBSCRIPTIONS_OFF = "Subscription is not enabled; configure subscription to use streaming"
# Sent in the stream's initial metadata once the subscription is registered: a client that waits
# for it knows every event committed from then on will reach it.
SUBSCRIPTION_ID_HEADER = "subscription-id"

Context = aio.ServicerContext[object, object]
Reply = TypeVar("Reply", pb.SubscribeResponse, pb.SubscribeAllResponse)


class SubscriptionRpcs:
    """`hub` is None when COS_SUBSCRIPTION_ENABLED is false: every rpc answers UNIMPLEMENTED."""

    def __init__(self, hub: SubscriptionHub | None) -> None:
        self._hub = hub

    async def _enabled_hub(self, context: Context) -> SubscriptionHub:
        if self._hub is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, SUBSCRIPTIONS_OFF)
            raise AssertionError("abort raises")
        return self._hub

    async def subscribe(self, request: pb.SubscribeRequest, context: Context) -> None:
        await self._stream(context, request.entity_id, request.subscription_id, _reply(pb.SubscribeResponse))

    async def subscribe_all(self, request: pb.SubscribeAllRequest, context: Context) -> None:
        await self._stream(context, None, request.subscription_id, _reply(pb.SubscribeAllResponse))

    async def unsubscribe(self, subscription_id: str, context: Context) -> str:
        """Both unsubscribe rpcs end either kind of subscription; an unknown id still succeeds (§7)."""
        hub = await self._enabled_hub(context)
        try:
            if not subscription_id:
                raise InvalidArgument("subscription_id is required")
            validate_subscription_id(subscription_id)
        except CosError as error:
            await abort_with(context, error)
        hub.unsubscribe(subscription_id)
        return subscription_id

    async def _stream(
        self,
        context: Context,
        entity_id: str | None,
        requested_id: str,
        reply: Callable[[str, EventWrapper], Reply],
    ) -> None:
        # The reader/writer API rather than an async generator: a client that cancels or
        # disconnects then interrupts this coroutine itself, so `release` runs at once instead of
        # whenever the abandoned generator is finalized.
        hub = await self._enabled_hub(context)
        try:
            if entity_id == "":
                raise InvalidArgument("entity_id is required")
            if entity_id is not None:
                validate_entity_id(entity_id)
            validate_subscription_id(requested_id)
            subscription = hub.open(requested_id or str(uuid.uuid4()), entity_id)
        except CosError as error:
            await abort_with(context, error)
            raise
        try:
            await context.send_initial_metadata(((SUBSCRIPTION_ID_HEADER, subscription.subscription_id),))
            while True:
                events = await subscription.take()
                if not events:
                    return  # unsubscribed: the stream completes with OK (decision D8)
                for wrapper in events:
                    if subscription.finished:
                        break
                    # Waits while the client's HTTP/2 window is full; the hub keeps buffering
                    # meanwhile and ends the subscription if its buffer overflows.
                    await context.write(reply(subscription.subscription_id, wrapper))
        except CosError as error:
            await abort_with(context, error)
        finally:
            hub.release(subscription)


def _reply(message_class: type[Reply]) -> Callable[[str, EventWrapper], Reply]:
    def build(subscription_id: str, wrapper: EventWrapper) -> Reply:
        return message_class(
            subscription_id=subscription_id,
            event=wrapper.event,
            resulting_state=wrapper.resulting_state,
            meta=wrapper.meta,
        )

    return build
