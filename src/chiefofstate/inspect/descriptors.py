"""Where the application's message types come from: a `FileDescriptorSet` file, or the write handler's
gRPC server reflection (docs/cli.md, "Decoding events and state").

CoS stores events and states as `google.protobuf.Any`; only the write handler knows their types. Both
sources fill one `DescriptorPool` of the caller's own, so the CLI never needs the application's
generated code and two applications' types cannot mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet
from google.protobuf.message import DecodeError, Message


class DescriptorsUnavailable(Exception):
    """The descriptors could not be read; the text names the file or address and what to do."""


class UnknownType(Exception):
    """A type name the descriptors do not hold."""


class MessageTypes(Protocol):
    """Resolves a message's full name (`bank.v1.BankAccount`) to a class that parses it."""

    @property
    def source(self) -> str:
        """Where the types come from, for messages: a file path or `reflection at HOST:PORT`."""
        ...

    @property
    def pool(self) -> descriptor_pool.DescriptorPool: ...

    def message_class(self, full_name: str) -> type[Message]:
        """Raises UnknownType, or DescriptorsUnavailable when the source cannot be read."""
        ...


class _PoolTypes:
    def __init__(self, pool: descriptor_pool.DescriptorPool, source: str) -> None:
        self._pool = pool
        self._source = source

    @property
    def source(self) -> str:
        return self._source

    @property
    def pool(self) -> descriptor_pool.DescriptorPool:
        return self._pool

    def message_class(self, full_name: str) -> type[Message]:
        try:
            descriptor = self._pool.FindMessageTypeByName(full_name)
        except KeyError:
            raise UnknownType(f"{full_name} is not a message type known to {self._source}") from None
        return message_factory.GetMessageClass(descriptor)


class NoTypes:
    """No descriptors at all: every type is unknown, so events and states stay undecoded."""

    source = "no descriptors"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self._pool = descriptor_pool.DescriptorPool()

    @property
    def pool(self) -> descriptor_pool.DescriptorPool:
        return self._pool

    def message_class(self, full_name: str) -> type[Message]:
        raise UnknownType(f"{full_name} cannot be decoded: {self.reason}")


def from_this_process(source: str = "this process's generated code") -> MessageTypes:
    """The types this process has imported generated code for (its default pool)."""
    return _PoolTypes(descriptor_pool.Default(), source)


def _in_dependency_order(files: dict[str, FileDescriptorProto]) -> Iterator[FileDescriptorProto]:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> Iterator[FileDescriptorProto]:
        if name in done or name not in files or name in path:
            return
        for dependency in files[name].dependency:
            yield from visit(dependency, (*path, name))
        done.add(name)
        yield files[name]

    for name in files:
        yield from visit(name, ())


def _add_with_dependencies(
    pool: descriptor_pool.DescriptorPool,
    files: dict[str, FileDescriptorProto],
    source: str,
    present: frozenset[str] = frozenset(),
) -> None:
    """Adds every file after its dependencies. A dependency the set leaves out (protoc without
    --include_imports) is taken from this process's own protobuf runtime when it has it, which covers
    google/protobuf/*.proto and the CoS protos."""
    default = descriptor_pool.Default()
    wanted = dict(files)
    missing = {
        d for proto in files.values() for d in proto.dependency if d not in wanted and d not in present
    }
    while missing:
        name = missing.pop()
        try:
            found = default.FindFileByName(name)
        except KeyError:
            raise DescriptorsUnavailable(
                f"{source} needs {name}, which it does not hold; write the set with "
                "`protoc --include_imports --descriptor_set_out=...`"
            ) from None
        proto = FileDescriptorProto()
        found.CopyToProto(proto)
        wanted[name] = proto
        missing.update(d for d in proto.dependency if d not in wanted and d not in present)
    for proto in _in_dependency_order(wanted):
        try:
            pool.Add(proto)
        except (TypeError, ValueError) as error:
            raise DescriptorsUnavailable(f"{source}: {proto.name} does not load ({error})") from None


def from_descriptor_set(path: Path) -> MessageTypes:
    """The types of a `FileDescriptorSet` as `protoc --descriptor_set_out=PATH` writes it."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DescriptorsUnavailable(f"cannot read the descriptor set {path}: {error.strerror}") from None
    descriptor_set = FileDescriptorSet()
    try:
        descriptor_set.ParseFromString(data)
    except DecodeError:
        raise DescriptorsUnavailable(
            f"{path} is not a FileDescriptorSet (write one with `protoc --descriptor_set_out`)"
        ) from None
    if not descriptor_set.file:
        raise DescriptorsUnavailable(f"{path} holds no file descriptors")
    pool = descriptor_pool.DescriptorPool()
    _add_with_dependencies(pool, {proto.name: proto for proto in descriptor_set.file}, str(path))
    return _PoolTypes(pool, str(path))


class ReflectionTypes:
    """Types asked of a gRPC server's reflection service as they are needed, each file once.

    `channel` stays the caller's to close; the answers are kept for the life of this object."""

    def __init__(self, channel: grpc.Channel, address: str, timeout_s: float = 10.0) -> None:
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        self._reflection = reflection_pb2
        self._stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        self._address = address
        self._timeout_s = timeout_s
        self._pool = descriptor_pool.DescriptorPool()
        self._loaded: set[str] = set()
        # Once the handler could not be asked, every later type fails the same way at once instead
        # of waiting out the timeout again for each event of a listing.
        self._failure: DescriptorsUnavailable | None = None

    @property
    def source(self) -> str:
        return f"the write handler's reflection at {self._address}"

    @property
    def pool(self) -> descriptor_pool.DescriptorPool:
        return self._pool

    def message_class(self, full_name: str) -> type[Message]:
        try:
            descriptor = self._pool.FindMessageTypeByName(full_name)
        except KeyError:
            self._load_file_of(full_name)
            try:
                descriptor = self._pool.FindMessageTypeByName(full_name)
            except KeyError:
                raise UnknownType(f"{full_name} is not a message type known to {self.source}") from None
        return message_factory.GetMessageClass(descriptor)

    def _load_file_of(self, symbol: str) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            self._ask(symbol)
        except DescriptorsUnavailable as failure:
            self._failure = failure
            raise

    def _ask(self, symbol: str) -> None:
        request = self._reflection.ServerReflectionRequest(file_containing_symbol=symbol)
        try:
            replies = list(self._stub.ServerReflectionInfo(iter([request]), timeout=self._timeout_s))
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code is grpc.StatusCode.UNIMPLEMENTED:
                why = "it does not serve gRPC server reflection"
            else:
                details = error.details() if isinstance(error, grpc.Call) else str(error)
                why = f"{code.name}: {details}"
            raise DescriptorsUnavailable(
                f"cannot read descriptors from the write handler at {self._address} ({why}); "
                "give a FileDescriptorSet with --descriptors FILE"
            ) from None
        files: dict[str, FileDescriptorProto] = {}
        for reply in replies:
            if reply.HasField("error_response"):
                raise UnknownType(f"{symbol} is not a message type known to {self.source}")
            for data in reply.file_descriptor_response.file_descriptor_proto:
                proto = FileDescriptorProto.FromString(data)
                if proto.name not in self._loaded:
                    files[proto.name] = proto
        _add_with_dependencies(self._pool, files, self.source, frozenset(self._loaded))
        self._loaded.update(files)
