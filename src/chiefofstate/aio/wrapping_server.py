"""A grpc.aio server as registration functions see it, with every handler wrapped once as it is added.

Generated `add_*_to_server` functions, the health service and server reflection (which checks that it
is given a grpc.aio server) register through it unchanged; ports, start and stop go to the server
underneath. Wrapping at registration costs nothing per call, where a server interceptor would run on
every one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

import grpc
from grpc import aio

# Strings: grpc's stubs make RpcMethodHandler generic, the runtime class is not subscriptable.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
# (full method name "/package.Service/Method", its handler) -> the handler to serve instead
Wrap: TypeAlias = "Callable[[str, Handler], Handler]"


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Wrap) -> None:
        self._inner = inner
        self._wrap = wrap
        self._handlers: dict[str, Handler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None  # not ours: UNIMPLEMENTED, answered by grpc
            # Bounded: only methods some registered service answers are kept.
            wrapped = self._handlers[method] = self._wrap(method, handler)
        return wrapped


class WrappingServer(aio.Server):
    def __init__(self, server: aio.Server, wrap: Wrap) -> None:
        self._server = server
        self._wrap = wrap

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            [_WrappedGenericHandler(handler, self._wrap) for handler in generic_rpc_handlers]
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Handler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self._wrap(f"/{service_name}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 (grpc's signature)
        return await self._server.wait_for_termination(timeout)
