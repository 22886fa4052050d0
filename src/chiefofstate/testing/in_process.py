"""Library mode: a whole node inside this Python process, calling an SDK write handler as a Python object.

    async with InProcessNode(Bank()) as node:            # the journal in memory
        state, meta = await node.process("acc-1", OpenAccount(owner="Ada"))

    async with InProcessNode(Bank(), read_handlers={"balances": balances}) as node:   # with a read side

Commands take the node's real path (one writer per entity, the journal, snapshots, validation), and the
handler's methods are called directly, without serializing a call or opening a connection; only the
protobuf `Any` packing the protocol defines remains. `store="sqlite"` keeps the journal in a file,
`store="postgres"` in a database, both from `env` (COS_DB_PATH, or COS_DB_HOST, COS_DB_NAME, ...).
The node's gRPC API also listens (on free ports, 127.0.0.1), so `CosClient(node.target, ...)` works too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

# googleapis-common-protos ships .pyi files but no py.typed marker, so mypy will not read them
from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]

from chiefofstate.config.settings import load_settings
from chiefofstate.core.errors import Code, CosError, DeadlineExceeded, HandlerFailed, NotFound, status_message
from chiefofstate.core.headers import HeaderValue
from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb
from chiefofstate.gen.chief_of_state.v1.common_pb2 import MetaData
from chiefofstate.gen.chief_of_state.v1.readside_pb2 import HandleReadSideRequest
from chiefofstate.gen.chief_of_state.v1.writeside_pb2 import (
    HandleCommandRequest,
    HandleCommandResponse,
    HandleEventRequest,
    HandleEventResponse,
)
from chiefofstate.node.node import Node
from chiefofstate.ports.read_handler import ENTITY_ID_HEADER, EVENT_TAG_HEADER, DeliveryFailed, ReadSideCall
from chiefofstate.sdk import client_rules as rules
from chiefofstate.sdk import headers_context
from chiefofstate.sdk.client_errors import CosCallError, error_for
from chiefofstate.sdk.local_node import free_ports
from chiefofstate.sdk.read import ReadHandler
from chiefofstate.sdk.rejected import Rejected
from chiefofstate.sdk.write import WriteHandler

S = TypeVar("S", bound=Message)
R = TypeVar("R")
Store = Literal["memory", "sqlite", "postgres"]
_PORT_VARIABLES = ("COS_PORT", "COS_MANAGEMENT_PORT", "COS_PROMETHEUS_PORT", "COS_CLUSTER_PORT")


def _handler_failure(rejected: Rejected) -> HandlerFailed:
    """What the node would get from the same handler over gRPC: its status and rich details."""
    details = None
    if rejected.details:
        packed = []
        for detail in rejected.details:
            item = any_pb2.Any()
            item.Pack(detail)
            packed.append(item)
        code_number, _ = rejected.code.value
        status = status_pb2.Status(code=code_number, message=rejected.message, details=packed)
        details = status.SerializeToString()
    return HandlerFailed(rejected.message, code=Code(rejected.code.value[0]), details=details)


class DirectWriteHandler:
    """The node's write-handler port answered by an SDK handler in this process (no RPC)."""

    def __init__(self, handler: WriteHandler[Any]) -> None:
        self._handler = handler

    async def handle_command(
        self, request: HandleCommandRequest, headers: Sequence[tuple[str, HeaderValue]], timeout_s: float
    ) -> HandleCommandResponse:
        token = headers_context.enter(headers)
        try:
            return await self._call(self._handler.handle_command_call(request), timeout_s, "HandleCommand")
        finally:
            headers_context.leave(token)

    async def handle_event(
        self, request: HandleEventRequest, timeout_s: float, headers: Sequence[tuple[str, HeaderValue]] = ()
    ) -> HandleEventResponse:
        return await self._call(self._handler.handle_event_call(request), timeout_s, "HandleEvent")

    async def _call(self, work: Awaitable[R], timeout_s: float, rpc: str) -> R:
        try:
            return await asyncio.wait_for(work, timeout_s)
        except Rejected as rejected:
            raise _handler_failure(rejected) from None
        except TimeoutError:
            raise DeadlineExceeded(f"{rpc} did not answer within {timeout_s}s") from None
        except Exception as error:
            # as the gRPC server of the SDK answers a handler bug
            raise HandlerFailed(
                f"{rpc} failed: {type(error).__name__}: {error}", code=Code.INTERNAL
            ) from None

    async def close(self) -> None:
        return None


class DirectReadHandler:
    """The node's read-handler port answered by an SDK read handler in this process (no RPC)."""

    def __init__(self, handler: ReadHandler[Any]) -> None:
        self._handler = handler

    async def handle(
        self, call: ReadSideCall, shard: int, timeout_s: float, trace_headers: Sequence[tuple[str, str]] = ()
    ) -> bool:
        # the headers the node sends a read handler over gRPC or HTTP (docs/contract.md §5.3)
        headers = [(ENTITY_ID_HEADER, call.entity_id), (EVENT_TAG_HEADER, str(shard)), *trace_headers]
        token = headers_context.enter(headers)
        try:
            request: HandleReadSideRequest = call.message()
            reply = await asyncio.wait_for(self._handler.handle_read_side_call(request), timeout_s)
        except TimeoutError:
            raise DeliveryFailed(f"HandleReadSide did not answer within {timeout_s}s") from None
        except Exception as error:
            # what the node sees of a failing handler over gRPC: a failed call, for the failure policy
            raise DeliveryFailed(f"HandleReadSide failed: {type(error).__name__}: {error}") from None
        finally:
            headers_context.leave(token)
        return reply.successful

    async def close(self) -> None:
        return None


def _read_side_env(read_side_ids: Sequence[str]) -> dict[str, str]:
    """Read sides for handlers called in process: their address is required but never dialled."""
    if not read_side_ids:
        return {}
    env = {"COS_READ_SIDE_ENABLED": "true"}
    for read_side_id in read_side_ids:
        env[f"COS_READ_SIDE_CONFIG__HOST__{read_side_id}"] = "127.0.0.1"
        env[f"COS_READ_SIDE_CONFIG__PORT__{read_side_id}"] = "1"
    return env


def _call_error(error: CosError) -> CosCallError:
    details: list[any_pb2.Any] = []
    if error.details:
        details = list(status_pb2.Status.FromString(error.details).details)
    return error_for(grpc.StatusCode[error.code.name], status_message(error), details)


class InProcessNode(Generic[S]):
    """A node in this process in front of `handler`, for tests and small programs (see the module doc)."""

    def __init__(
        self,
        handler: WriteHandler[S],
        *,
        store: Store = "memory",
        env: Mapping[str, str] | None = None,
        read_handlers: Mapping[str, ReadHandler[Any]] | None = None,
    ):
        """`read_handlers` maps read side ids to read handlers the node delivers every event to, called
        in this process as well (offsets kept in the store, in memory with the memory store)."""
        state_type = getattr(type(handler), "state_type", None)
        if state_type is None:
            raise TypeError(
                f"{type(handler).__name__} has no state type: derive it from WriteHandler[YourState]"
            )
        if store not in ("memory", "sqlite", "postgres"):
            raise ValueError(f"store must be memory, sqlite or postgres, not {store!r}")
        settings_env = {
            "COS_ADDRESS": "127.0.0.1",
            # never dialled: the handler is called in this process
            "COS_WRITE_SIDE_HOST": "127.0.0.1",
            "COS_WRITE_SIDE_PORT": "1",
            **dict(zip(_PORT_VARIABLES, map(str, free_ports(len(_PORT_VARIABLES))), strict=True)),
            **_read_side_env(tuple(read_handlers or {})),
            **(env or {}),
        }
        if store == "sqlite" and "COS_DB_PATH" not in settings_env:
            raise ValueError("store='sqlite' needs COS_DB_PATH in env")
        if store == "postgres" and "COS_DB_HOST" not in settings_env:
            raise ValueError("store='postgres' needs COS_DB_HOST (and COS_DB_NAME, ...) in env")
        self._state_type: type[S] = state_type
        self.read_handlers: Mapping[str, ReadHandler[Any]] = dict(read_handlers or {})
        self._node = Node(
            load_settings(settings_env),
            write_handler=DirectWriteHandler(handler),
            read_handlers={
                read_side_id: DirectReadHandler(read_handler)
                for read_side_id, read_handler in (read_handlers or {}).items()
            },
            memory_store=store == "memory",
        )
        self.target = f"127.0.0.1:{settings_env['COS_PORT']}"

    async def __aenter__(self) -> Self:
        await self._node.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self._node.stop()

    async def process(
        self, entity_id: str, command: Message, *, headers: rules.Headers | None = None
    ) -> tuple[S, MetaData]:
        """As CosClient.process, through the node's command path without RPC; raises the same errors."""
        commands = self._node.commands
        if commands is None:
            raise RuntimeError("the node is not started: use `async with InProcessNode(...)`")
        request = rules.command_request(entity_id, command)
        try:
            state = await commands.process_command(
                entity_id, request.command, rules.metadata(headers, None), None
            )
        except CosError as error:
            raise _call_error(error) from None
        reply = pb.ProcessCommandResponse.FromString(state.reply)
        return rules.typed_state(reply.state, self._state_type), reply.meta

    async def get(self, entity_id: str) -> tuple[S, MetaData] | None:
        """As CosClient.get: the state and meta, or None for an entity with no event."""
        commands = self._node.commands
        if commands is None:
            raise RuntimeError("the node is not started: use `async with InProcessNode(...)`")
        try:
            state = await commands.get_state(entity_id, None)
        except NotFound:
            return None
        except CosError as error:
            raise _call_error(error) from None
        reply = pb.GetStateResponse.FromString(state.reply)
        return rules.typed_state(reply.state, self._state_type), reply.meta
