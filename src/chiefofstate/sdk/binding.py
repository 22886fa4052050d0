"""What the handler base classes share: binding methods to message types, finding the state type,
and turning packed `Any` values into typed messages (and back).

A decorator only marks a function with the message class it handles; `__init_subclass__` of the base
class collects the marks into a table by full protobuf name, so dispatch is one dictionary look-up.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from chiefofstate.sdk.rejected import Rejected

M = TypeVar("M", bound=Message)

# CoS sends a packed google.protobuf.Empty as the prior state of an entity with no event yet.
_EMPTY_STATE: Final = "google.protobuf.Empty"


def type_name(value: any_pb2.Any) -> str:
    """The full protobuf name in a type URL (`type.googleapis.com/bank.v1.Deposit` → `bank.v1.Deposit`)."""
    return value.type_url.rsplit("/", 1)[-1]


def require_message_class(candidate: object) -> None:
    """Refuse, where the decorator is written, an argument that is not a protobuf message class."""
    if not (isinstance(candidate, type) and issubclass(candidate, Message)):
        raise TypeError(f"expected a protobuf message class, got {candidate!r}")


def mark(function: Callable[..., Any], attribute: str, *message_classes: type[Message]) -> None:
    """Record on `function` the message classes it handles (decorators may be stacked)."""
    setattr(function, attribute, (*getattr(function, attribute, ()), *message_classes))


def collect(cls: type, attribute: str, what: str) -> dict[str, tuple[type[Message], str]]:
    """Every marked method of `cls` and its bases: full message name → (message class, method name).

    Two methods for one message type in the same class is a mistake, refused here; a subclass may
    override its base's method for a type."""
    table: dict[str, tuple[type[Message], str]] = {}
    for klass in reversed(cls.__mro__):
        seen_here: dict[str, str] = {}
        for name, member in vars(klass).items():
            for message_class in getattr(member, attribute, ()):
                full_name = message_class.DESCRIPTOR.full_name
                if full_name in seen_here:
                    raise TypeError(
                        f"{cls.__name__}: {seen_here[full_name]} and {name} both handle {what} {full_name}"
                    )
                seen_here[full_name] = name
                table[full_name] = (message_class, name)
    return table


def declared_state_type(cls: type, base: type) -> type[Message] | None:
    """The `S` of `class X(base[S])`, or an explicit `state_type = S` class attribute; None if neither."""
    explicit = vars(cls).get("state_type")
    if explicit is not None:
        return _checked_state_type(cls, explicit)
    for parent in getattr(cls, "__orig_bases__", ()):
        if typing.get_origin(parent) is base:
            (argument,) = typing.get_args(parent)
            if isinstance(argument, TypeVar):
                return None  # a generic intermediate class; its subclasses name the type
            return _checked_state_type(cls, argument)
    inherited: type[Message] | None = getattr(cls, "state_type", None)
    return inherited


def _checked_state_type(cls: type, candidate: object) -> type[Message]:
    if isinstance(candidate, type) and issubclass(candidate, Message):
        return candidate
    raise TypeError(f"{cls.__name__}: the state type must be a protobuf message class, not {candidate!r}")


def check_return_annotations(
    cls: type, table: Mapping[str, tuple[type[Message], str]], state_type: type[Message]
) -> None:
    """Refuse, when the class is made, an event method annotated to return another type than the state
    type (mypy catches most of these; this catches code that is not type-checked)."""
    for _, method_name in table.values():
        function = getattr(cls, method_name)
        try:
            hints = typing.get_type_hints(function)
        except Exception:  # noqa: BLE001 - annotations naming what the module cannot resolve: nothing to check
            continue
        returned = hints.get("return")
        if isinstance(returned, type) and issubclass(returned, Message) and returned is not state_type:
            raise TypeError(
                f"{cls.__name__}.{method_name} returns {returned.DESCRIPTOR.full_name}, "
                f"but the state type is {state_type.DESCRIPTOR.full_name}"
            )


def positional_count(function: Callable[..., Any]) -> int:
    """How many positional parameters `function` declares, `self` included (a `*args` counts as many)."""
    count = 0
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return 1_000
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def unpack(value: any_pb2.Any, message_class: type[M], what: str) -> M:
    message = message_class()
    try:
        value.Unpack(message)
    except DecodeError as error:
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{what} {message_class.DESCRIPTOR.full_name} does not decode: {error}",
        ) from None
    return message


def unpack_state(value: any_pb2.Any, state_type: type[M]) -> M:
    """The typed state; a fresh (all-default) one for an entity with no event yet."""
    name = type_name(value)
    if not value.type_url or name == _EMPTY_STATE:
        return state_type()
    if name != state_type.DESCRIPTOR.full_name:
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the state is a {name}, but this handler's state type is {state_type.DESCRIPTOR.full_name}",
        )
    return unpack(value, state_type, "state")


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def call(method: Callable[..., Any], *arguments: object) -> object:
    """Run a handler method, sync or async. Sync methods run on the event loop: keep them quick."""
    result = method(*arguments)
    if inspect.isawaitable(result):
        awaited: object = await typing.cast(Awaitable[object], result)
        return awaited
    return result
