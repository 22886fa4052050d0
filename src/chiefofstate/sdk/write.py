"""Write handlers as plain Python classes.

    class Bank(WriteHandler[BankAccount]):
        @command(OpenAccount)
        def open(self, command: OpenAccount, state: BankAccount, meta: MetaData) -> AccountOpened:
            ...

        @event(AccountOpened)
        def opened(self, event: AccountOpened, state: BankAccount, meta: MetaData) -> BankAccount:
            ...

A command method gets the unpacked command, the typed prior state (all defaults for an entity with no
event yet, `meta.revision_number == 0`) and the prior event's meta; it returns one event, a list of
events, or None for a command that changes nothing (a read or a no-op). An event method folds one event
into the state and returns the new state, which must be of the class's state type. Either may be
`async def`. `raise Rejected(code, message, details=...)` refuses.

`handle_command` / `handle_event` are the protocol-free halves of `WriteSideHandlerService`; the gRPC and
HTTP servers (serving.py) call them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar, overload

import grpc
from google.protobuf.message import Message

from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.sdk import binding
from chiefofstate.sdk.rejected import Rejected

S = TypeVar("S", bound=Message)
C = TypeVar("C", bound=Message)
E = TypeVar("E", bound=Message)
H = TypeVar("H")
R = TypeVar("R", bound="Message | Sequence[Message] | None")

_COMMAND_MARK: Final = "__cos_command__"
_EVENT_MARK: Final = "__cos_event__"

CommandResult = Message | Sequence[Message] | None


class _CommandDecorator(Protocol[C]):
    @overload
    def __call__(
        self, method: Callable[[H, C, S, MetaData], Awaitable[R]]
    ) -> Callable[[H, C, S, MetaData], Awaitable[R]]: ...
    @overload
    def __call__(self, method: Callable[[H, C, S, MetaData], R]) -> Callable[[H, C, S, MetaData], R]: ...


class _EventDecorator(Protocol[E]):
    # The state parameter and the result share one type variable, so mypy refuses an event method
    # whose result is not the state type it was given.
    @overload
    def __call__(
        self, method: Callable[[H, E, S, MetaData], Awaitable[S]]
    ) -> Callable[[H, E, S, MetaData], Awaitable[S]]: ...
    @overload
    def __call__(self, method: Callable[[H, E, S, MetaData], S]) -> Callable[[H, E, S, MetaData], S]: ...


def command(command_type: type[C]) -> _CommandDecorator[C]:
    """Bind a method to the commands of `command_type`."""

    def decorate(method: Any) -> Any:
        binding.mark(method, _COMMAND_MARK, command_type)
        return method

    binding.require_message_class(command_type)
    return decorate  # Any: the overloads of the protocol describe what `decorate` does


def event(event_type: type[E]) -> _EventDecorator[E]:
    """Bind a method to the events of `event_type`."""

    def decorate(method: Any) -> Any:
        binding.mark(method, _EVENT_MARK, event_type)
        return method

    binding.require_message_class(event_type)
    return decorate


class WriteHandler(Generic[S]):
    """Base class of a write handler whose state is `S` (`class Bank(WriteHandler[BankAccount])`)."""

    state_type: ClassVar[type[Message]]
    _commands: ClassVar[dict[str, tuple[type[Message], str]]] = {}
    _events: ClassVar[dict[str, tuple[type[Message], str]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._commands = binding.collect(cls, _COMMAND_MARK, "command")
        cls._events = binding.collect(cls, _EVENT_MARK, "event")
        state_type = binding.declared_state_type(cls, WriteHandler)
        if state_type is None:
            return  # a generic intermediate base; a concrete subclass names the state type
        cls.state_type = state_type
        binding.check_return_annotations(cls, cls._events, state_type)

    @classmethod
    def command_types(cls) -> tuple[str, ...]:
        """Full names of the commands this handler accepts."""
        return tuple(cls._commands)

    @classmethod
    def event_types(cls) -> tuple[str, ...]:
        """Full names of the events this handler folds (for COS_WRITE_SIDE_EVENT_PROTOS, for example)."""
        return tuple(cls._events)

    # The two calls below are what every transport (gRPC, HTTP, the in-process node) invokes. Override
    # one (calling `super()`) to act on every call whatever its type: log it, time it, trace it, or, in
    # a test double, answer something the `@command`/`@event` methods never would.

    async def handle_command_call(self, request: HandleCommandRequest) -> HandleCommandResponse:
        """Answer one `HandleCommand` call: dispatches to the `@command` method; raises Rejected."""
        return await handle_command(self, request)

    async def handle_event_call(self, request: HandleEventRequest) -> HandleEventResponse:
        """Answer one `HandleEvent` call: dispatches to the `@event` method; raises Rejected."""
        return await handle_event(self, request)


def _require_state_type(handler: WriteHandler[Any]) -> type[Message]:
    state_type: type[Message] | None = getattr(type(handler), "state_type", None)
    if state_type is None:
        raise TypeError(f"{type(handler).__name__} has no state type: derive it from WriteHandler[YourState]")
    return state_type


async def handle_command(handler: WriteHandler[Any], request: HandleCommandRequest) -> HandleCommandResponse:
    """`HandleCommand`: the events the command produces (none for a no-op); raises Rejected."""
    state_type = _require_state_type(handler)
    if not request.command.type_url:
        # what a caller gets when it leaves ProcessCommandRequest.command unset
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"missing command: send an Any packing one of {', '.join(handler.command_types())}",
        )
    name = binding.type_name(request.command)
    bound = handler._commands.get(name)
    if bound is None:
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"unknown command type {name or '<empty>'}: {type(handler).__name__} handles "
            f"{', '.join(handler.command_types()) or 'no commands'}",
        )
    command_class, method_name = bound
    command_message = binding.unpack(request.command, command_class, "command")
    state = binding.unpack_state(request.prior_state, state_type)
    result = await binding.call(
        getattr(handler, method_name), command_message, state, request.prior_event_meta
    )
    events = _events_of(result, type(handler).__name__, method_name)
    # `events` only, never the deprecated single `event` field; an empty list is a no-op
    return HandleCommandResponse(events=[binding.pack(item) for item in events])


def _events_of(result: object, class_name: str, method_name: str) -> list[Message]:
    if result is None:
        return []
    items = [result] if isinstance(result, Message) else result
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise TypeError(
            f"{class_name}.{method_name} returned {type(result).__name__}; "
            "a command method returns an event, a list of events or None"
        )
    for item in items:
        if not isinstance(item, Message):
            raise TypeError(f"{class_name}.{method_name} returned {type(item).__name__} among its events")
    return list(items)


async def handle_event(handler: WriteHandler[Any], request: HandleEventRequest) -> HandleEventResponse:
    """`HandleEvent`: the state after the event; raises Rejected."""
    state_type = _require_state_type(handler)
    name = binding.type_name(request.event)
    bound = handler._events.get(name)
    if bound is None:
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"unknown event type {name or '<empty>'}: {type(handler).__name__} folds "
            f"{', '.join(handler.event_types()) or 'no events'}",
        )
    event_class, method_name = bound
    event_message = binding.unpack(request.event, event_class, "event")
    state = binding.unpack_state(request.prior_state, state_type)
    result = await binding.call(getattr(handler, method_name), event_message, state, request.event_meta)
    if not isinstance(result, state_type):
        raise TypeError(
            f"{type(handler).__name__}.{method_name} returned {type(result).__name__}, "
            f"not the state type {state_type.DESCRIPTOR.full_name}"
        )
    return HandleEventResponse(resulting_state=binding.pack(result))
