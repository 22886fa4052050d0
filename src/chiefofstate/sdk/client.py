"""`CosClient`: the async client of a Chief of State node, typed by the entities' state.

    async with CosClient("localhost:9000", BankAccount) as bank:
        state, meta = await bank.process("acc-1", OpenAccount(owner="Ada"))
        found = await bank.get("acc-1")            # (state, meta), or None for an unknown entity
        async with bank.subscribe("acc-1") as updates:
            async for update in updates:           # Update(event, state, meta, subscription_id)
                ...

Failures raise the typed exceptions of client_errors.py; retries follow client_rules.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.service_pb2_grpc import ChiefOfStateServiceStub
from chiefofstate.sdk import client_rules as rules
from chiefofstate.sdk.channels import Tls
from chiefofstate.sdk.client_errors import CosCallError, from_rpc_error

S = TypeVar("S", bound=Message)
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Update(Generic[S]):
    """One event streamed by a subscription, with the state it led to."""

    event: any_pb2.Any
    state: S
    meta: MetaData
    subscription_id: str

    def event_as(self, event_type: type[M]) -> M | None:
        """The event unpacked as `event_type`, or None when it is another type."""
        message = event_type()
        return message if self.event.Unpack(message) else None


class Subscription(Generic[S]):
    """A live stream of committed events. `async with` waits until the node has registered it (every
    event committed after that is delivered); iterating without it starts the stream lazily. Delivery is
    at most once: events committed while no stream is open are not replayed."""

    def __init__(self, call: Any, state_type: type[S]) -> None:
        self._call = call
        self._state_type = state_type

    async def __aenter__(self) -> Self:
        try:
            await self._call.initial_metadata()
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[Update[S]]:
        try:
            async for reply in self._call:
                yield Update(
                    event=reply.event,
                    state=rules.typed_state(reply.resulting_state, self._state_type),
                    meta=reply.meta,
                    subscription_id=reply.subscription_id,
                )
        except grpc.RpcError as error:
            if error.code() is grpc.StatusCode.CANCELLED and self._call.cancelled():
                return  # closed by us
            raise from_rpc_error(error) from None


class CosClient(Generic[S]):
    """Async client for entities whose state is `S`. `target` is `host:port` of the node's gRPC port."""

    def __init__(
        self,
        target: str,
        state_type: type[S],
        *,
        tls: Tls | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
        retry: rules.RetryPolicy = rules.DEFAULT_RETRY,
        channel_options: list[tuple[str, Any]] | None = None,
    ) -> None:
        options = [*(channel_options or []), *(tls.options() if tls else [])]
        if tls is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, tls.credentials(), options=options)
        self._stub = ChiefOfStateServiceStub(self._channel)
        self._state_type = state_type
        self._token = token
        self._timeout_s = timeout_s
        self._retry = retry

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def process(
        self,
        entity_id: str,
        command: Message,
        *,
        headers: rules.Headers | None = None,
        timeout_s: float | None = None,
    ) -> tuple[S, MetaData]:
        """Send `command` to entity `entity_id`; the entity's state and meta after it."""
        request = rules.command_request(entity_id, command)
        metadata = rules.metadata(headers, self._token)
        for attempt in range(1, self._retry.attempts + 1):
            try:
                reply = await self._stub.ProcessCommand(
                    request, metadata=metadata, timeout=timeout_s or self._timeout_s
                )
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
                if attempt == self._retry.attempts or not rules.process_command_may_retry(
                    failure.code, failure.message
                ):
                    raise failure from None
                await asyncio.sleep(self._retry.backoff_s(attempt))
                continue
            return rules.typed_state(reply.state, self._state_type), reply.meta
        raise AssertionError("unreachable")

    async def get(self, entity_id: str, *, timeout_s: float | None = None) -> tuple[S, MetaData] | None:
        """The entity's state and meta; None when it has no event."""
        if not entity_id:
            raise ValueError("entity_id is required")
        request = pb.GetStateRequest(entity_id=entity_id)
        metadata = rules.metadata(None, self._token)
        for attempt in range(1, self._retry.attempts + 1):
            try:
                reply = await self._stub.GetState(
                    request, metadata=metadata, timeout=timeout_s or self._timeout_s
                )
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
                if failure.code is grpc.StatusCode.NOT_FOUND:
                    return None
                if attempt == self._retry.attempts or not rules.get_state_may_retry(failure.code):
                    raise failure from None
                await asyncio.sleep(self._retry.backoff_s(attempt))
                continue
            return rules.typed_state(reply.state, self._state_type), reply.meta
        raise AssertionError("unreachable")

    def subscribe(self, entity_id: str, *, subscription_id: str | None = None) -> Subscription[S]:
        """Events of one entity as they are committed (the node needs COS_SUBSCRIPTION_ENABLED=true)."""
        if not entity_id:
            raise ValueError("entity_id is required")
        request = pb.SubscribeRequest(
            entity_id=entity_id, subscription_id=subscription_id or str(uuid.uuid4())
        )
        return Subscription(
            self._stub.Subscribe(request, metadata=rules.metadata(None, self._token)), self._state_type
        )

    def subscribe_all(self, *, subscription_id: str | None = None) -> Subscription[S]:
        """Events of every entity as they are committed (the node needs COS_SUBSCRIPTION_ENABLED=true)."""
        request = pb.SubscribeAllRequest(subscription_id=subscription_id or str(uuid.uuid4()))
        call = self._stub.SubscribeAll(request, metadata=rules.metadata(None, self._token))
        return Subscription(call, self._state_type)


__all__ = ["CosCallError", "CosClient", "Subscription", "Update"]
