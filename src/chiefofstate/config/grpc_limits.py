"""COS_GRPC_SERVER_* bounds on the gRPC ports' connections (docs/operations.md, "gRPC connection limits").

They apply to the client port and to the cluster port alike. The prefix keeps them apart from upstream's
COS_GRPC_KEEPALIVE_*, which configure the node's outbound channels (to handlers and peers), not its servers.
"""

from __future__ import annotations

from dataclasses import dataclass

from chiefofstate.config.parsing import Env
from chiefofstate.core.errors import ConfigError
from chiefofstate.core.headers import MAX_CARRIED_HEADER_BYTES


@dataclass(frozen=True, slots=True)
class GrpcLimits:
    # Per connection; more wait in the client for a free stream. Half the server's bound: one connection
    # can hold every subscription the node allows (COS_SUBSCRIPTION_MAX), as upstream's clients may, and
    # still not keep other connections' calls out.
    max_concurrent_streams: int = 10_000
    max_concurrent_rpcs: int = 20_000  # per server, subscriptions included (at most COS_SUBSCRIPTION_MAX)
    # HTTP/2 header list a request may send, as COS_HTTP_MAX_HEADER_SIZE on HTTP. At least twice the headers
    # a command may carry, so that too many reach the command path's INVALID_ARGUMENT (docs/contract.md §3.1).
    max_header_list_bytes: int = 32 * 1024
    handshake_timeout_s: float = 10.0  # TCP accepted → TLS and HTTP/2 preface done
    max_connection_idle_s: float = 300.0  # without a call in progress; 0: never closed for idleness
    max_connection_age_s: float = 0.0  # 0: no bound
    max_connection_age_grace_s: float = 30.0  # calls still running at the age get this long to finish
    keepalive_time_s: float = 60.0  # the server pings a connection quiet for this long
    keepalive_timeout_s: float = 20.0  # and closes it when the ping is not answered in time
    min_ping_interval_s: float = 10.0  # clients' pings closer than this are strikes
    max_ping_strikes: int = 2  # beyond: the connection is closed (GOAWAY too_many_pings)

    def server_options(self) -> list[tuple[str, int]]:
        """grpc core channel arguments for a server with these bounds."""
        options = [
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_metadata_size", self.max_header_list_bytes),
            ("grpc.absolute_max_metadata_size", self.max_header_list_bytes),
            ("grpc.server_handshake_timeout_ms", _ms(self.handshake_timeout_s)),
            ("grpc.keepalive_time_ms", _ms(self.keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout_s)),
            # The server's own pings go on while a subscription stream is quiet; grpc would stop after 2.
            ("grpc.http2.max_pings_without_data", 0),
            # Clients may ping without a call in progress (upstream's outbound channels do by default),
            # no more often than the interval.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(self.min_ping_interval_s)),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
        ]
        if self.max_connection_idle_s > 0:
            options.append(("grpc.max_connection_idle_ms", _ms(self.max_connection_idle_s)))
        if self.max_connection_age_s > 0:
            options.append(("grpc.max_connection_age_ms", _ms(self.max_connection_age_s)))
            options.append(("grpc.max_connection_age_grace_ms", _ms(self.max_connection_age_grace_s)))
        return options


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _duration(env: Env, name: str, default: str, *, maximum_s: float, zero_allowed: bool = False) -> float:
    seconds = env.duration(name, default)
    if seconds == 0 and zero_allowed:
        return 0.0
    if not 0 < seconds <= maximum_s:
        lowest = "0 (no bound) or above 0" if zero_allowed else "above 0"
        raise ConfigError(name, f"must be {lowest} and at most {maximum_s:g}s (got {seconds:g}s)")
    return seconds


_DAY_S = 24 * 3600.0


def load_grpc_limits(env: Env) -> GrpcLimits:
    return GrpcLimits(
        max_concurrent_streams=env.integer(
            "COS_GRPC_SERVER_MAX_CONCURRENT_STREAMS", 10_000, minimum=1, maximum=1_000_000
        ),
        max_concurrent_rpcs=env.integer(
            "COS_GRPC_SERVER_MAX_CONCURRENT_RPCS", 20_000, minimum=1, maximum=10_000_000
        ),
        max_header_list_bytes=env.integer(
            "COS_GRPC_SERVER_MAX_HEADER_LIST_SIZE",
            32 * 1024,
            minimum=2 * MAX_CARRIED_HEADER_BYTES,
            maximum=1 << 24,
        ),
        handshake_timeout_s=_duration(env, "COS_GRPC_SERVER_HANDSHAKE_TIMEOUT", "10s", maximum_s=3600),
        max_connection_idle_s=_duration(
            env, "COS_GRPC_SERVER_MAX_CONNECTION_IDLE", "5m", maximum_s=_DAY_S, zero_allowed=True
        ),
        max_connection_age_s=_duration(
            env, "COS_GRPC_SERVER_MAX_CONNECTION_AGE", "0s", maximum_s=30 * _DAY_S, zero_allowed=True
        ),
        max_connection_age_grace_s=_duration(
            env, "COS_GRPC_SERVER_MAX_CONNECTION_AGE_GRACE", "30s", maximum_s=_DAY_S
        ),
        keepalive_time_s=_duration(env, "COS_GRPC_SERVER_KEEPALIVE_TIME", "60s", maximum_s=_DAY_S),
        keepalive_timeout_s=_duration(env, "COS_GRPC_SERVER_KEEPALIVE_TIMEOUT", "20s", maximum_s=3600),
        min_ping_interval_s=_duration(env, "COS_GRPC_SERVER_MIN_PING_INTERVAL", "10s", maximum_s=_DAY_S),
        max_ping_strikes=env.integer("COS_GRPC_SERVER_MAX_PING_STRIKES", 2, minimum=0, maximum=1000),
    )
