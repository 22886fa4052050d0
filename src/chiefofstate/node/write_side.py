"""The user's write handler as the node calls it: gRPC or HTTP (COS_WRITE_SIDE_PROTOCOL), behind the
circuit breaker when one is configured (docs/contract.md §3.11)."""

from __future__ import annotations

from chiefofstate.config.settings import WriteSideSettings
from chiefofstate.core.breaker import CircuitBreaker
from chiefofstate.ports.write_handler import WriteHandler
from chiefofstate.writeside.breaker import BreakerGuardedWriteHandler
from chiefofstate.writeside.grpc import GrpcWriteHandler, channel_options


def create_write_handler(write_side: WriteSideSettings, max_message_bytes: int) -> WriteHandler:
    handler: WriteHandler
    if write_side.protocol == "http":
        # Imported only when chosen, as every HTTP-only part is, to keep a gRPC node's start-up short.
        from chiefofstate.writeside.http import HttpWriteHandler

        handler = HttpWriteHandler(
            write_side.host,
            write_side.port,
            use_tls=write_side.use_tls,
            # a reply carries base64 Anys, about 4/3 of the messages they encode
            max_reply_bytes=max_message_bytes * 4 // 3 + 64 * 1024,
        )
    else:
        handler = GrpcWriteHandler(
            f"{write_side.host}:{write_side.port}",
            pool_size=write_side.channel_pool_size,
            use_tls=write_side.use_tls,
            options=channel_options(
                max_message_bytes=max_message_bytes,
                keepalive_enabled=write_side.keepalive_enabled,
                keepalive_time_s=write_side.keepalive_time_s,
                keepalive_timeout_s=write_side.keepalive_timeout_s,
                keepalive_without_calls=write_side.keepalive_without_calls,
            ),
        )
    if write_side.breaker is not None:
        handler = BreakerGuardedWriteHandler(handler, CircuitBreaker(write_side.breaker))
    return handler
