"""What the async and the blocking clients share: building requests, reading typed states, and when a
failed call may be sent again.

Retries are for failures that prove the call changed nothing:

* `GetState` reads only, so it is retried on UNAVAILABLE and RESOURCE_EXHAUSTED;
* `ProcessCommand` writes, and a command sent twice may be applied twice. It is retried only when
  the failure proves the node never took the command: UNAVAILABLE because no connection could be made
  (the request never left this process), or RESOURCE_EXHAUSTED, which the node answers before
  anything is written (the entity's mailbox or the journal writer's queue is full). An UNAVAILABLE or
  DEADLINE_EXCEEDED after the request was sent is not retried: the command may have been persisted.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb

M = TypeVar("M", bound=Message)

# gRPC's own text when no connection could be made: the request was never sent.
_NOT_CONNECTED: Final = "failed to connect to all addresses"
_EMPTY_STATE: Final = "google.protobuf.Empty"

Headers = Mapping[str, str | bytes]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: `initial_backoff_s`, times `multiplier` per attempt, capped at `max_backoff_s`,
    each wait spread by ±`jitter` (a fraction); `attempts` counts the first call. `attempts=1` disables
    retries."""

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("backoff times must not be negative and the multiplier at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")

    def backoff_s(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number `retry` (1 for the first retry)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))


DEFAULT_RETRY: Final = RetryPolicy()
NO_RETRIES: Final = RetryPolicy(attempts=1)


def get_state_may_retry(code: grpc.StatusCode) -> bool:
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def process_command_may_retry(code: grpc.StatusCode, message: str) -> bool:
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return True
    return code is grpc.StatusCode.UNAVAILABLE and _NOT_CONNECTED in message


def metadata(headers: Headers | None, token: str | None) -> tuple[tuple[str, str | bytes], ...]:
    """gRPC metadata: the caller's headers (lower-cased keys; bytes values need a `-bin` key) and the
    bearer token."""
    items: list[tuple[str, str | bytes]] = []
    for key, value in (headers or {}).items():
        name = key.lower()
        if isinstance(value, bytes) != name.endswith("-bin"):
            raise ValueError(f"header {key!r}: bytes values need a key ending in -bin, and only they may")
        items.append((name, value))
    if token is not None:
        items.append(("authorization", f"Bearer {token}"))
    return tuple(items)


def command_request(entity_id: str, command: Message) -> pb.ProcessCommandRequest:
    if not entity_id:
        raise ValueError("entity_id is required")
    packed = any_pb2.Any()
    packed.Pack(command)
    return pb.ProcessCommandRequest(entity_id=entity_id, command=packed)


def typed_state(value: any_pb2.Any, state_type: type[M]) -> M:
    """The state as `state_type`; all defaults for an entity with no event yet. TypeError when the node
    holds another type (the client was made with the wrong state type)."""
    name = value.type_url.rsplit("/", 1)[-1]
    if not value.type_url or name == _EMPTY_STATE:
        return state_type()
    if name != state_type.DESCRIPTOR.full_name:
        raise TypeError(f"the entity's state is a {name}, not a {state_type.DESCRIPTOR.full_name}")
    state = state_type()
    try:
        value.Unpack(state)
    except DecodeError as error:
        raise TypeError(f"the state does not decode as {state_type.DESCRIPTOR.full_name}: {error}") from None
    return state
