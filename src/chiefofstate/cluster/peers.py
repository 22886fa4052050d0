"""Calls to other members' internal gRPC service (COS_CLUSTER_PORT): the same `ChiefOfStateService`
methods a client calls, sent on to the member that owns the entity's shard.

A request goes on as it came: the same message, the caller's headers and what is left of its deadline.
Replies come back as the owner's bytes, and failures as the owner's status, message and rich details,
so a caller cannot tell a forwarded answer from a direct one (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Sequence
from typing import Protocol

import grpc
from grpc import aio

from chiefofstate.core.errors import Code, CosError
from chiefofstate.core.headers import Metadata
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.writeside.grpc import status_details

log = logging.getLogger("chiefofstate.cluster")

# Set on a forwarded call, so the owner never forwards it again; answered by the owner with
# NOT_HERE_KEY when it does not serve the shard (any more), so the sender re-routes once.
FORWARDED_KEY = "x-cos-forwarded"
NOT_HERE_KEY = "x-cos-not-here"
# On every refusal a member sends: a failure without it never reached a member (connection refused,
# reset, a partition), and the request may go to another owner instead.
ANSWERED_KEY = "x-cos-answered"
PROCESS_COMMAND = "/chief_of_state.v1.ChiefOfStateService/ProcessCommand"
GET_STATE = "/chief_of_state.v1.ChiefOfStateService/GetState"
_UNSUBSCRIBE = "/chief_of_state.v1.ChiefOfStateService/Unsubscribe"
# Headers that belong to one HTTP/2 hop, not to the request: gRPC sets its own on the next hop.
_HOP_HEADERS = frozenset({"user-agent", "content-type", "te", "grpc-accept-encoding", "grpc-timeout"})
MAX_PEER_CHANNELS = 64


class NotHere(Exception):
    """The member called does not serve the shard: the route was stale."""


class Unreachable(Exception):
    """The call failed before any member answered it. `never_sent`: the connection could not even be
    made, so the request cannot have run; otherwise it may have (a connection lost mid-call)."""

    def __init__(self, error: CosError, *, never_sent: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.never_sent = never_sent


def _bytes(message: bytes) -> bytes:
    return message


def forwarded_metadata(
    metadata: Metadata, trace_headers: Sequence[tuple[str, str]]
) -> list[tuple[str, str | bytes]]:
    kept: list[tuple[str, str | bytes]] = [
        (key, value)
        for key, value in metadata
        if key not in _HOP_HEADERS and not key.startswith(":") and key not in ("traceparent", "tracestate")
    ]
    kept.extend(trace_headers)
    kept.append((FORWARDED_KEY, "1"))
    return kept


def translated(error: aio.AioRpcError) -> CosError | NotHere | Unreachable:
    keys = {key for key, _ in error.trailing_metadata() or ()}
    if NOT_HERE_KEY in keys:
        return NotHere(error.details() or "")
    answered = ANSWERED_KEY in keys
    details = status_details(error)
    code = Code(error.code().value[0])
    message = error.details() or ""
    if not answered and code is Code.UNAVAILABLE:
        failure = CosError(f"the member owning the shard could not be reached: {message}", code=code)
        # gRPC's wording when no connection could be made at all (refused, no route, DNS).
        return Unreachable(failure, never_sent="failed to connect" in message.lower())
    return CosError(message, code=code, details=details)


class _Peer:
    """One member's channel and its calls, each made once rather than on every forwarded request."""

    __slots__ = ("_calls", "channel")

    def __init__(self, channel: aio.Channel) -> None:
        self.channel = channel
        # Bounded by the internal port's few unary methods a member calls.
        self._calls: dict[str, aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}

    def method(self, name: str) -> aio.UnaryUnaryMultiCallable[bytes, bytes]:
        call = self._calls.get(name)
        if call is None:
            call = self._calls[name] = self.channel.unary_unary(
                name, request_serializer=_bytes, response_deserializer=_bytes
            )
        return call


class PeerCalls(Protocol):
    """What forwarding needs of the peers: PeerClients' `call`, or the streams that carry calls."""

    async def call(
        self,
        address: str,
        method: str,
        request: bytes,
        metadata: Sequence[tuple[str, str | bytes]],
        timeout_s: float,
    ) -> bytes: ...


class PeerTls(Protocol):
    """The node's own certificate, presented to peers; `version` changes when it is reloaded."""

    @property
    def version(self) -> int: ...

    def channel_credentials(self) -> grpc.ChannelCredentials: ...


class PeerClients:
    """One channel per member address, the most recently used kept (at most MAX_PEER_CHANNELS); over TLS
    when given the node's certificate, with new channels once it is reloaded."""

    def __init__(self, options: Sequence[tuple[str, int]] = (), tls: PeerTls | None = None) -> None:
        self._tls = tls
        self._tls_version = tls.version if tls is not None else 0
        self._credentials = tls.channel_credentials() if tls is not None else None
        # A channel of its own per member, never a shared subchannel: a new channel to an address whose
        # last one failed must connect afresh, not inherit the failed one's reconnect backoff.
        local = ("grpc.use_local_subchannel_pool", 1)
        self._options = [*(option for option in options if option[0] != local[0]), local]
        self._channels: collections.OrderedDict[str, _Peer] = collections.OrderedDict()
        self._retired: list[aio.Channel] = []

    def _peer(self, address: str) -> _Peer:
        if self._tls is not None and self._tls.version != self._tls_version:
            # Channels made with the previous certificate are retired (closed at close(), or as more retire).
            self._tls_version = self._tls.version
            self._credentials = self._tls.channel_credentials()
            self._retired.extend(peer.channel for peer in self._channels.values())
            self._channels.clear()
        peer = self._channels.get(address)
        if peer is None:
            if self._credentials is not None:
                channel = aio.secure_channel(address, self._credentials, options=self._options)
            else:
                channel = aio.insecure_channel(address, options=self._options)
            peer = self._channels[address] = _Peer(channel)
            if len(self._channels) > MAX_PEER_CHANNELS:
                _, oldest = self._channels.popitem(last=False)
                self._retired.append(oldest.channel)  # closed at close(): calls may still be on it
        else:
            self._channels.move_to_end(address)
        return peer

    async def call(
        self,
        address: str,
        method: str,
        request: bytes,
        metadata: Sequence[tuple[str, str | bytes]],
        timeout_s: float,
    ) -> bytes:
        """Any unary method of the member's internal port, bytes in and out (a command or read sent on
        to the shard's owner, a read-side manager call sent on to the member that runs the projection,
        an unsubscribe); raises NotHere, Unreachable or the member's own failure as a CosError."""
        peer = self._peer(address)
        while len(self._retired) > MAX_PEER_CHANNELS:  # bounded however long members are away
            await self._retired.pop(0).close(grace=None)
        try:
            reply: bytes = await peer.method(method)(
                request, timeout=max(timeout_s, 0.001), metadata=tuple(metadata)
            )
        except aio.AioRpcError as error:
            failure = translated(error)
            if isinstance(failure, Unreachable):
                self.forget(address, peer.channel)
            raise failure from None
        return reply

    def channel(self, address: str) -> aio.Channel:
        """The channel to the member at `address` (forwarding streams share it with the unary calls)."""
        return self._peer(address).channel

    def forget(self, address: str, channel: aio.Channel) -> None:
        """`channel` failed to reach `address`: a channel that failed to connect backs off before trying
        again, and the next member at this address (the owner restarted in place) must be reached at
        once, on a new one."""
        peer = self._channels.get(address)
        if peer is not None and peer.channel is channel:
            del self._channels[address]
            self._retired.append(channel)  # closed by a later call's bounding, or at close()

    async def unsubscribe_everywhere(
        self, addresses: Sequence[str], subscription_id: str, caller: Metadata, timeout_s: float
    ) -> None:
        """End the subscription on every member named, all called at once, with the caller's headers
        (its token is checked there again). A member that does not answer within `timeout_s` is logged
        and skipped: a subscription held there stays open until its client ends it."""
        request = pb.UnsubscribeRequest(subscription_id=subscription_id).SerializeToString()
        metadata = forwarded_metadata(caller, ())
        calls = [self.call(address, _UNSUBSCRIBE, request, metadata, timeout_s) for address in addresses]
        for address, outcome in zip(
            addresses, await asyncio.gather(*calls, return_exceptions=True), strict=True
        ):
            if isinstance(outcome, Exception):
                log.warning(
                    "unsubscribe %s did not reach the member at %s: %s", subscription_id, address, outcome
                )

    async def close(self) -> None:
        for channel in [*(peer.channel for peer in self._channels.values()), *self._retired]:
            await channel.close(grace=None)
        self._channels.clear()
        self._retired.clear()


def not_here_trailer() -> tuple[tuple[str, str], ...]:
    return ((NOT_HERE_KEY, "1"),)


ANSWERED_TRAILER = ((ANSWERED_KEY, "1"),)
