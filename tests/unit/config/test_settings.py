from pathlib import Path

import pytest

from chiefofstate.config.settings import load_settings
from chiefofstate.core.errors import ConfigError

BASE = {"COS_WRITE_SIDE_HOST": "handler", "COS_WRITE_SIDE_PORT": "50051"}


def load(**overrides: str):  # type: ignore[no-untyped-def]
    return load_settings({**BASE, **overrides})


def rejects(variable: str, **overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(**overrides)
    assert caught.value.variable == variable
    return str(caught.value)


def test_defaults_are_upstreams() -> None:
    settings = load()
    assert settings.server.address == "0.0.0.0" and settings.server.port == 9000
    assert settings.server.http_port == 9001 and settings.server.management_port == 8558
    assert settings.server.command_timeout_s == 5
    assert settings.num_shards == 16
    assert settings.store.postgres is None and settings.store.sqlite_path == Path("./cos.db")
    assert settings.write_side.call_timeout_s == 60 and settings.write_side.channel_pool_size == 1
    assert settings.write_side.breaker is None and not settings.write_side.validation.enabled
    assert (
        settings.snapshots.enabled and settings.snapshots.frequency == 100 and settings.snapshots.retain == 2
    )
    assert settings.logging.style == "JSON" and settings.logging.level == "WARNING"
    assert settings.entities.cache_capacity == 100_000


def test_postgres_is_used_when_a_host_is_set_with_upstreams_defaults() -> None:
    pg = load(COS_DB_HOST="db").store.postgres
    assert pg is not None
    assert (pg.port, pg.database, pg.user, pg.password, pg.schema) == (
        5432,
        "postgres",
        "postgres",
        "changeme",
        "public",
    )
    assert pg.pool_max_size == 5 and pg.pool_min_idle == 1 and pg.pool_idle_timeout_s == 60.0


def test_durations_use_hocon_syntax_and_bare_numbers_are_milliseconds() -> None:
    settings = load(
        COS_WRITE_SIDE_BREAKER_ENABLED="yes",
        COS_WRITE_SIDE_BREAKER_CALL_TIMEOUT="1500",
        COS_WRITE_SIDE_BREAKER_RESET_TIMEOUT="2m",
        COS_GRPC_KEEPALIVE_ENABLED="true",
        COS_GRPC_KEEPALIVE_TIME="90 seconds",
    )
    assert settings.write_side.breaker is not None
    assert settings.write_side.breaker.call_timeout_s == 1.5
    assert settings.write_side.breaker.reset_timeout_s == 120
    assert settings.write_side.keepalive_time_s == 90


def test_header_lists_and_validation_lists_are_parsed() -> None:
    settings = load(
        COS_WRITE_SIDE_PROPAGATED_HEADERS="x-a, x-b-bin",
        COS_WRITE_PERSISTED_HEADERS="x-user",
        COS_WRITE_SIDE_PROTO_VALIDATION="true",
        COS_WRITE_SIDE_EVENT_PROTOS="bank.v1.MoneyDeposited, bank.v1.AccountOpened",
    )
    assert settings.write_side.propagated_headers == ("x-a", "x-b-bin")
    assert settings.write_side.persisted_headers == ("x-user",)
    assert settings.write_side.validation.event_names == {"bank.v1.MoneyDeposited", "bank.v1.AccountOpened"}
    assert settings.write_side.validation.state_names == frozenset()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COS_NUM_SHARDS", "12", "power of two (got 12)"),
        ("COS_NUM_SHARDS", "0", "at least 1"),
        ("COS_PORT", "70000", "at most 65535"),
        ("COS_PORT", "abc", "whole number"),
        ("LOG_STYLE", "FANCY", "one of json, standard, simple"),
        ("LOG_LEVEL", "LOUD", "one of"),
        ("COS_WRITE_SIDE_PROTOCOL", "both", "not currently supported"),
        ("COS_WRITE_SIDE_PROTOCOL", "ftp", "one of grpc, http"),
        ("COS_SERVER_PROTOCOL", "udp", "one of grpc, http, both"),
        ("COS_COMMAND_HANDLER_TIMEOUT", "301", "at most 300"),
        ("COS_DEPLOYMENT_MODE", "mesos", "unrecognized deployment mode, 'mesos'"),
        ("COS_NUM_SNAPSHOTS_TO_RETAIN", "101", "at most 100"),
        ("COS_SNAPSHOT_FREQUENCY", "0", "at least 1"),
        ("COS_DISABLE_SNAPSHOT", "maybe", "true or false"),
        ("COS_GRPC_CLIENT_POOL_SIZE", "0", "at least 1"),
        ("COS_EVENT_LOOP", "trio", "one of uvloop, asyncio"),
        ("COS_CLUSTER_FORWARD_STREAM_MAX_IN_FLIGHT", "-1", "at least 0"),
        ("COS_CLUSTER_FORWARD_STREAM_MAX_IN_FLIGHT", "many", "whole number"),
    ],
)
def test_invalid_values_name_the_variable(variable: str, value: str, message: str) -> None:
    assert message in rejects(variable, **{variable: value})


def test_breaker_limits_apply_only_when_enabled() -> None:
    load(COS_WRITE_SIDE_BREAKER_MAX_FAILURES="500")
    rejects(
        "COS_WRITE_SIDE_BREAKER_MAX_FAILURES",
        COS_WRITE_SIDE_BREAKER_ENABLED="true",
        COS_WRITE_SIDE_BREAKER_MAX_FAILURES="500",
    )
    rejects(
        "COS_WRITE_SIDE_BREAKER_RESET_TIMEOUT",
        COS_WRITE_SIDE_BREAKER_ENABLED="true",
        COS_WRITE_SIDE_BREAKER_RESET_TIMEOUT="500ms",
    )


def test_snapshot_limits_do_not_apply_when_snapshots_are_off() -> None:
    settings = load(COS_DISABLE_SNAPSHOT="true", COS_SNAPSHOT_FREQUENCY="0")
    assert not settings.snapshots.enabled


def test_the_write_handler_target_is_required_to_serve_but_not_to_read_the_journal() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({})
    assert caught.value.variable == "COS_WRITE_SIDE_HOST"
    assert "COS_WRITE_SIDE_PORT" in str(
        pytest.raises(ConfigError, load_settings, {"COS_WRITE_SIDE_HOST": "h"}).value
    )
    load_settings({}, require_write_side=False)


def test_retired_variables_produce_warnings() -> None:
    settings = load(COS_EVENTS_BATCH_THRESHOLD="10")
    assert any("COS_EVENTS_BATCH_THRESHOLD" in warning for warning in settings.warnings)


def test_the_http_api_http_write_handlers_and_subscriptions_can_be_switched_on() -> None:
    settings = load(
        COS_SERVER_PROTOCOL="Both",
        COS_HTTP_ADDRESS="127.0.0.1",
        COS_HTTP_PORT="9100",
        COS_WRITE_SIDE_PROTOCOL="http",
        COS_SUBSCRIPTION_ENABLED="true",
        COS_SUBSCRIPTION_BUFFER_SIZE="50",
        COS_SUBSCRIPTION_MAX="7",
    )
    assert settings.server.protocol == "both" and settings.server.http_port == 9100
    assert settings.write_side.protocol == "http"
    assert settings.subscription_enabled
    assert settings.subscriptions.buffer_size == 50 and settings.subscriptions.max_subscriptions == 7
    defaults = load()
    assert defaults.subscriptions.buffer_size == 1000 and defaults.subscriptions.max_subscriptions == 10_000
    assert defaults.subscriptions.write_timeout_s == 10.0
    assert load(COS_SUBSCRIPTION_WRITE_TIMEOUT="500ms").subscriptions.write_timeout_s == 0.5


@pytest.mark.parametrize("value", ["0s", "50ms", "2h", "soon"])
def test_the_subscription_write_timeout_must_be_a_sensible_duration(value: str) -> None:
    error = pytest.raises(ConfigError, load, COS_SUBSCRIPTION_WRITE_TIMEOUT=value).value
    assert "COS_SUBSCRIPTION_WRITE_TIMEOUT" in str(error)


@pytest.mark.parametrize("variable", ["COS_SUBSCRIPTION_BUFFER_SIZE", "COS_SUBSCRIPTION_MAX"])
def test_subscription_bounds_must_be_positive(variable: str) -> None:
    assert variable in str(pytest.raises(ConfigError, load, **{variable: "0"}).value)


def test_subscriptions_without_a_grpc_server_produce_a_warning() -> None:
    settings = load(COS_SERVER_PROTOCOL="http", COS_SUBSCRIPTION_ENABLED="true")
    assert any("COS_SUBSCRIPTION_ENABLED has no effect" in warning for warning in settings.warnings)


def test_the_event_loop_is_uvloop_unless_asyncio_is_asked_for() -> None:
    assert load().server.event_loop == "uvloop"
    assert load(COS_EVENT_LOOP="asyncio").server.event_loop == "asyncio"
