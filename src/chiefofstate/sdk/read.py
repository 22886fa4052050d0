"""Read handlers as plain Python classes.

    class Balances(ReadHandler[BankAccount]):
        @handles(MoneyDeposited)
        async def deposited(self, event: MoneyDeposited, state: BankAccount, meta: MetaData) -> None:
            ...

A method gets the unpacked event, the typed state after it and the event's meta, and, when it declares a
fifth parameter, the id of the read side delivering the event (one handler may serve several read sides):

        @handles(MoneyDeposited)
        def deposited(
            self, event: MoneyDeposited, state: BankAccount, meta: MetaData, read_side_id: str
        ) -> None:
            ...

Returning None or True
acknowledges the event; returning False (or raising) fails the delivery, and the read side's failure
policy decides what happens next (docs/contract.md §5.5). Events no method handles are acknowledged
without a call, since a read side receives every event of the journal; set `ignore_unknown = False` to
fail on them instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar, overload

import grpc
from google.protobuf.message import Message

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest, HandleReadSideResponse
from chiefofstate.sdk import binding
from chiefofstate.sdk.rejected import Rejected

S = TypeVar("S", bound=Message)
E = TypeVar("E", bound=Message)
H = TypeVar("H")

_HANDLES_MARK: Final = "__cos_read_event__"


class _HandlesDecorator(Protocol[E]):
    # Four parameters, or five when the method takes the read side id (a `str`).
    @overload
    def __call__(
        self, method: Callable[[H, E, S, MetaData, str], Awaitable[bool | None]]
    ) -> Callable[[H, E, S, MetaData, str], Awaitable[bool | None]]: ...
    @overload
    def __call__(
        self, method: Callable[[H, E, S, MetaData, str], bool | None]
    ) -> Callable[[H, E, S, MetaData, str], bool | None]: ...
    @overload
    def __call__(
        self, method: Callable[[H, E, S, MetaData], Awaitable[bool | None]]
    ) -> Callable[[H, E, S, MetaData], Awaitable[bool | None]]: ...
    @overload
    def __call__(
        self, method: Callable[[H, E, S, MetaData], bool | None]
    ) -> Callable[[H, E, S, MetaData], bool | None]: ...


def handles(*event_types: type[E]) -> _HandlesDecorator[E]:
    """Bind a read handler method to the events of `event_types` (several: the method's event parameter
    takes any of them, so annotate it with their union or `Message`)."""
    if not event_types:
        raise TypeError("handles() needs at least one event type")
    for event_type in event_types:
        binding.require_message_class(event_type)

    def decorate(method: Any) -> Any:
        binding.mark(method, _HANDLES_MARK, *event_types)
        return method

    return decorate  # Any: the overloads of the protocol describe what `decorate` does


class ReadHandler(Generic[S]):
    """Base class of a read handler over entities whose state is `S`."""

    state_type: ClassVar[type[Message]]
    ignore_unknown: ClassVar[bool] = True
    _handlers: ClassVar[dict[str, tuple[type[Message], str]]] = {}
    _wants_read_side_id: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = binding.collect(cls, _HANDLES_MARK, "event")
        cls._wants_read_side_id = frozenset(
            method_name
            for _, method_name in cls._handlers.values()
            if binding.positional_count(getattr(cls, method_name)) >= 5
        )
        state_type = binding.declared_state_type(cls, ReadHandler)
        if state_type is not None:
            cls.state_type = state_type

    @classmethod
    def event_types(cls) -> tuple[str, ...]:
        return tuple(cls._handlers)

    async def handle_read_side_call(self, request: HandleReadSideRequest) -> HandleReadSideResponse:
        """Answer one `HandleReadSide` call, whichever transport carried it: dispatches to the `@handles`
        method. Override it (calling `super()`) to act on every delivery, e.g. to log or time it, or to
        see events no method handles."""
        return await handle_read_side(self, request)


async def handle_read_side(
    handler: ReadHandler[Any], request: HandleReadSideRequest
) -> HandleReadSideResponse:
    """`HandleReadSide`: successful unless the method said False; raises Rejected or the method's error."""
    state_type: type[Message] | None = getattr(type(handler), "state_type", None)
    if state_type is None:
        raise TypeError(f"{type(handler).__name__} has no state type: derive it from ReadHandler[YourState]")
    name = binding.type_name(request.event)
    bound = handler._handlers.get(name)
    if bound is None:
        if handler.ignore_unknown:
            return HandleReadSideResponse(successful=True)
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"unknown event type {name or '<empty>'}: {type(handler).__name__} handles "
            f"{', '.join(handler.event_types()) or 'no events'}",
        )
    event_class, method_name = bound
    event_message = binding.unpack(request.event, event_class, "event")
    state = binding.unpack_state(request.state, state_type)
    method = getattr(handler, method_name)
    if method_name in handler._wants_read_side_id:
        result = await binding.call(method, event_message, state, request.meta, request.read_side_id)
    else:
        result = await binding.call(method, event_message, state, request.meta)
    return HandleReadSideResponse(successful=result is not False)
