import pytest

from chiefofstate.config.grpc_limits import GrpcLimits
from chiefofstate.config.settings import load_settings
from chiefofstate.core.errors import ConfigError

BASE = {"COS_WRITE_SIDE_HOST": "handler", "COS_WRITE_SIDE_PORT": "50051"}


def test_defaults_bound_every_connection_and_leave_the_age_unbounded() -> None:
    limits = load_settings(BASE).grpc_limits
    assert limits == GrpcLimits()
    options = dict(limits.server_options())
    assert options["grpc.max_concurrent_streams"] == 10_000
    assert options["grpc.max_metadata_size"] == options["grpc.absolute_max_metadata_size"] == 32 * 1024
    assert options["grpc.server_handshake_timeout_ms"] == 10_000
    assert options["grpc.max_connection_idle_ms"] == 300_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.http2.max_ping_strikes"] == 2
    assert "grpc.max_connection_age_ms" not in options


def test_settings_reach_the_server_options() -> None:
    limits = load_settings(
        {
            **BASE,
            "COS_GRPC_SERVER_MAX_CONCURRENT_STREAMS": "8",
            "COS_GRPC_SERVER_MAX_CONCURRENT_RPCS": "50",
            "COS_GRPC_SERVER_MAX_CONNECTION_IDLE": "0",
            "COS_GRPC_SERVER_MAX_CONNECTION_AGE": "30m",
            "COS_GRPC_SERVER_MAX_CONNECTION_AGE_GRACE": "500ms",
            "COS_GRPC_SERVER_MIN_PING_INTERVAL": "1m",
        }
    ).grpc_limits
    assert limits.max_concurrent_rpcs == 50
    options = dict(limits.server_options())
    assert options["grpc.max_concurrent_streams"] == 8
    assert "grpc.max_connection_idle_ms" not in options  # 0: never closed for idleness
    assert options["grpc.max_connection_age_ms"] == 1_800_000
    assert options["grpc.max_connection_age_grace_ms"] == 500
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 60_000


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("COS_GRPC_SERVER_MAX_CONCURRENT_STREAMS", "0"),
        ("COS_GRPC_SERVER_MAX_CONCURRENT_RPCS", "-1"),
        ("COS_GRPC_SERVER_MAX_HEADER_LIST_SIZE", "8192"),  # below twice the carried-header bound
        ("COS_GRPC_SERVER_HANDSHAKE_TIMEOUT", "0"),
        ("COS_GRPC_SERVER_KEEPALIVE_TIME", "soon"),
        ("COS_GRPC_SERVER_MAX_CONNECTION_IDLE", "2d"),
    ],
)
def test_out_of_range_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, variable: value})
    assert caught.value.variable == variable


def test_the_http_tls_handshake_timeout_is_a_setting() -> None:
    assert load_settings(BASE).http_limits.tls_handshake_timeout_s == 10.0
    limits = load_settings({**BASE, "COS_HTTP_TLS_HANDSHAKE_TIMEOUT": "750ms"}).http_limits
    assert limits.tls_handshake_timeout_s == 0.75
