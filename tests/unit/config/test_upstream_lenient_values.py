"""Values upstream's configuration accepts start this node too, changed only where said
(docs/configuration.md, "Values accepted as upstream accepts them")."""

from __future__ import annotations

import io
import logging

import pytest

from chiefofstate.config.settings import load_settings
from chiefofstate.core.errors import ConfigError
from chiefofstate.stores.migrations import parse_initial_version
from chiefofstate.telemetry.logging import configure_logging

BASE = {"COS_WRITE_SIDE_HOST": "handler", "COS_WRITE_SIDE_PORT": "50051"}


@pytest.mark.parametrize(("value", "level"), [("OFF", "OFF"), ("trace", "DEBUG"), ("ALL", "DEBUG")])
def test_upstreams_other_log_levels_are_accepted(value: str, level: str) -> None:
    assert load_settings({**BASE, "LOG_LEVEL": value}).logging.level == level


def test_log_level_off_silences_even_errors() -> None:
    stream = io.StringIO()
    configure_logging("OFF", "JSON", "cos", stream=stream)
    try:
        logging.getLogger("chiefofstate.test").error("must not appear")
        logging.getLogger("aiosqlite").critical("nor this")
        assert stream.getvalue() == ""
    finally:
        configure_logging("WARNING", "JSON", "cos", stream=io.StringIO())


def test_a_client_pool_over_64_is_capped_and_said() -> None:
    settings = load_settings({**BASE, "COS_GRPC_CLIENT_POOL_SIZE": "500"})
    assert settings.write_side.channel_pool_size == 64
    said = [warning for warning in settings.warnings if "COS_GRPC_CLIENT_POOL_SIZE=500" in warning]
    assert len(said) == 1 and "using 64" in said[0]


def test_keepalive_values_are_ignored_while_keepalive_is_off() -> None:
    settings = load_settings({**BASE, "COS_GRPC_KEEPALIVE_TIME": "soon", "COS_GRPC_KEEPALIVE_TIMEOUT": "-"})
    assert settings.write_side.keepalive_enabled is False
    unused = [warning.split(" ")[0] for warning in settings.warnings if "is set but not used" in warning]
    assert unused == ["COS_GRPC_KEEPALIVE_TIME", "COS_GRPC_KEEPALIVE_TIMEOUT"]


def test_keepalive_values_are_checked_once_keepalive_is_on() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, "COS_GRPC_KEEPALIVE_ENABLED": "true", "COS_GRPC_KEEPALIVE_TIME": "soon"})
    assert caught.value.variable == "COS_GRPC_KEEPALIVE_TIME"
    settings = load_settings({**BASE, "COS_GRPC_KEEPALIVE_ENABLED": "on", "COS_GRPC_KEEPALIVE_TIME": "90s"})
    assert settings.write_side.keepalive_enabled and settings.write_side.keepalive_time_s == 90


def test_a_minimum_idle_count_above_the_pool_size_is_clamped_as_upstreams_pool_does() -> None:
    settings = load_settings(
        {**BASE, "COS_DB_HOST": "db", "COS_DB_POOL_MAX_SIZE": "4", "COS_DB_POOL_MIN_IDLE_CONNECTIONS": "10"}
    )
    assert settings.store.postgres is not None and settings.store.postgres.pool_min_idle == 4
    assert any("COS_DB_POOL_MIN_IDLE_CONNECTIONS=10" in warning for warning in settings.warnings)


@pytest.mark.parametrize("value", [" 6", "6 ", "\t6\n"])
def test_the_initial_migration_version_is_trimmed(value: str) -> None:
    assert parse_initial_version(value) == 6


@pytest.mark.parametrize(("value", "message"), [("  ", "setting provided empty"), (" 6x ", "cannot be '6x'")])
def test_the_initial_migration_version_keeps_upstreams_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_initial_version(value)


@pytest.mark.parametrize(
    "name",
    [
        "COS_ENABLED_PLUGINS",
        "COS_READ_SIDE_OFFSET_DB_HOST",
        "COS_READ_SIDE_OFFSET_STORE_TABLE",
        "COS_POSTGRES_HOST",
        "COS_DOCKER_REPLICA_COUNT",
    ],
)
def test_namely_era_variables_get_the_retired_warning_only(name: str) -> None:
    warnings = load_settings({**BASE, name: "x"}).warnings
    assert warnings == (f"{name} is no longer read (docs/configuration.md lists what replaced it)",)
