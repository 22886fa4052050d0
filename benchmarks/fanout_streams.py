"""The two helper processes of `benchmarks.subscription_fanout`.

    python -m benchmarks.fanout_streams reader TARGET COUNT [RATE]
    python -m benchmarks.fanout_streams bare MESSAGE_HEX

`reader` holds COUNT `SubscribeAll` streams on TARGET and reads them as fast as it can (or, given
RATE, at most RATE messages per second per stream, pausing after each); it prints
"ready" once every stream is registered, then answers each line it reads on stdin with a JSON line
`{"received": <messages so far, all streams>, "ended": {<status>: <streams>}}`, until stdin closes.

`bare` is the floor the node's fan-out is compared with: a plain grpc.aio server answering
`SubscribeAll` by writing the given serialized message again and again, as fast as the stream takes it,
with no subscription logic at all. It prints its port, then serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

import grpc
from grpc import aio

from chiefofstate.gen.chief_of_state.v1 import service_pb2 as pb

SUBSCRIBE_ALL = "/chief_of_state.v1.ChiefOfStateService/SubscribeAll"
STREAMS_PER_CHANNEL = 10
REGISTRATION_LIMIT_S = 60.0


def _same(message: bytes) -> bytes:
    return message


async def read_streams(target: str, count: int, rate: float = 0.0) -> None:
    channels = [aio.insecure_channel(target) for _ in range(max(1, -(-count // STREAMS_PER_CHANNEL)))]
    received = [0] * count
    endings: Counter[str] = Counter()
    registered = 0

    async def consume(index: int) -> None:
        nonlocal registered
        channel = channels[index // STREAMS_PER_CHANNEL]
        request = pb.SubscribeAllRequest(subscription_id=f"bench-{index}").SerializeToString()
        call = channel.unary_stream(SUBSCRIBE_ALL, request_serializer=_same, response_deserializer=_same)(
            request
        )
        await call.initial_metadata()  # registered from here on
        registered += 1
        try:
            async for _ in call:
                received[index] += 1
                if rate:
                    await asyncio.sleep(1 / rate)
        except aio.AioRpcError as error:
            endings[error.code().name] += 1

    readers = [asyncio.create_task(consume(i)) for i in range(count)]
    try:
        for _ in range(int(REGISTRATION_LIMIT_S / 0.01)):
            if registered == count:
                break
            await asyncio.sleep(0.01)
        print("ready" if registered == count else f"only {registered} of {count} registered", flush=True)
        while await asyncio.to_thread(sys.stdin.readline):
            print(json.dumps({"received": sum(received), "ended": dict(endings)}), flush=True)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for channel in channels:
            await channel.close()


async def serve_bare(message: bytes) -> None:
    async def subscribe_all(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> None:
        await context.send_initial_metadata((("subscription-id", "bare"),))
        while True:
            await context.write(message)

    server = aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        subscribe_all, request_deserializer=_same, response_serializer=_same
    )
    service, method = SUBSCRIBE_ALL.rsplit("/", 1)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service[1:], {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(0)


def main(argv: list[str]) -> int:
    if argv[:1] == ["reader"] and len(argv) in (3, 4):
        asyncio.run(read_streams(argv[1], int(argv[2]), float(argv[3]) if len(argv) == 4 else 0.0))
    elif argv[:1] == ["bare"] and len(argv) == 2:
        asyncio.run(serve_bare(bytes.fromhex(argv[1])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
