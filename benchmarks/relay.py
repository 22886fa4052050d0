"""One unary hop and nothing else: a server that sends every ChiefOfStateService call on to an upstream
server as bytes, with the caller's metadata and remaining deadline, and returns the upstream's reply.

Put in front of the floor harness it is the floor "extended by one hop", the reference for a command a
cluster member forwards to the shard's owner (docs/performance.md, "Cluster"): the hop costs the same
work here as in the node (one more server call in, one more client call out, no decoding).
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc
from grpc import aio

from benchmarks.handlers import run_on_loop, serve_until_signalled
from benchmarks.messages import CHANNEL_OPTIONS, SERVER_OPTIONS

SERVICE = "chief_of_state.v1.ChiefOfStateService"
RELAYED = ("ProcessCommand", "GetState")
_HOP_HEADERS = frozenset({"user-agent", "content-type", "te", "grpc-accept-encoding", "grpc-timeout"})


def _bytes(message: bytes) -> bytes:
    return message


class Relay(grpc.GenericRpcHandler):
    def __init__(self, upstream: aio.Channel) -> None:
        self._calls = {
            f"/{SERVICE}/{name}": upstream.unary_unary(
                f"/{SERVICE}/{name}", request_serializer=_bytes, response_deserializer=_bytes
            )
            for name in RELAYED
        }

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        call = self._calls.get(handler_call_details.method)
        if call is None:
            return None

        async def relay(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
            metadata = tuple(
                (key, value) for key, value in context.invocation_metadata() or () if key not in _HOP_HEADERS
            )
            remaining = context.time_remaining()
            reply: bytes = await call(request, metadata=metadata, timeout=remaining)
            return reply

        return grpc.unary_unary_rpc_method_handler(
            relay, request_deserializer=_bytes, response_serializer=_bytes
        )


async def _main(host: str, port: int, upstream: str) -> None:
    async with aio.insecure_channel(upstream, options=CHANNEL_OPTIONS) as channel:
        server = aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers((Relay(channel),))
        bound = server.add_insecure_port(f"{host}:{port}")
        await serve_until_signalled(server, f"listening on {host}:{bound}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the server to relay to")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop", help="as the node's loop")
    args = parser.parse_args()
    run_on_loop(args.loop, _main(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
