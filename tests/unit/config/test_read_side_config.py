"""Read-side definitions from YAML and from variables, with upstream's defaults and quirks
(docs/contract.md §5.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chiefofstate.config.read_sides import ReadSideSettings, parse_env_definitions
from chiefofstate.config.settings import load_settings
from chiefofstate.core.errors import ConfigError
from chiefofstate.core.readside_rules import FailurePolicy

BASE = {"COS_WRITE_SIDE_HOST": "handler", "COS_WRITE_SIDE_PORT": "50051", "COS_READ_SIDE_ENABLED": "true"}


def read_sides(**env: str) -> tuple[ReadSideSettings, ...]:
    return load_settings({**BASE, **env}).read_sides.read_sides


def config_error(**env: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, **env})
    assert "\n" not in str(caught.value)
    return caught.value


# ------------------------------------------------------------------------------------------------ YAML


def test_a_yaml_file_with_several_documents_and_upstreams_defaults(tmp_path: Path) -> None:
    config = tmp_path / "read-sides.yaml"
    config.write_text(
        "---\n"
        "readSideId: accounts\nhost: accounts-svc\nport: 50052\n"
        "---\n"
        "readSideId: audit_log-2\nprotocol: HTTP\nhost: audit\nport: '8080'\nuseTls: true\n"
        "timeout: 1500\nautoStart: false\nenabled: 'false'\nfailurePolicy: replay_skip\nunknownKey: ignored\n"
    )
    first, second = read_sides(COS_READ_SIDE_CONFIG=str(config))
    assert first == ReadSideSettings("accounts", "accounts-svc", 50052)
    assert (first.protocol, first.use_tls, first.timeout_ms, first.auto_start, first.enabled) == (
        "grpc",
        False,
        30_000,
        True,
        True,
    )
    assert first.failure_policy is FailurePolicy.STOP
    assert second == ReadSideSettings(
        "audit_log-2",
        "audit",
        8080,
        protocol="http",
        use_tls=True,
        timeout_ms=1500,
        auto_start=False,
        enabled=False,
        failure_policy=FailurePolicy.REPLAY_SKIP,
    )


def test_a_folder_is_read_recursively_whatever_the_file_names(tmp_path: Path) -> None:
    (tmp_path / "nested").mkdir()
    (tmp_path / "a.yml").write_text("readSideId: a\nhost: h\nport: 1\n")
    (tmp_path / "nested" / "b.conf").write_text("readSideId: b\nhost: h\nport: 2\nfailurePolicy: ''\n")
    ids = [read_side.read_side_id for read_side in read_sides(COS_READ_SIDE_CONFIG=str(tmp_path))]
    assert ids == ["a", "b"]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("host: h\nport: 1", "readSideId is required"),
        ("readSideId: -bad\nhost: h\nport: 1", "read side '-bad'"),
        ("readSideId: bad_\nhost: h\nport: 1", "readSideId must be letters and digits"),
        ("readSideId: ok\nport: 1", "read side 'ok' (%s, document 1): host is required"),
        ("readSideId: ok\nhost: h", "port is required"),
        ("readSideId: ok\nhost: h\nport: abc", "port must be a whole number from 1 to 65535 (got 'abc')"),
        ("readSideId: ok\nhost: h\nport: 70000", "port must be a whole number"),
        ("readSideId: ok\nhost: h\nport: 1\nprotocol: soap", "protocol must be grpc or http"),
        ("readSideId: ok\nhost: h\nport: 1\nuseTls: maybe", "useTls must be true or false"),
        ("readSideId: ok\nhost: h\nport: 1\ntimeout: 0", "timeout must be a whole number"),
        ("readSideId: ok\nhost: h\nport: 1\nfailurePolicy: REPLAY-SKIP", "failurePolicy must be one of"),
        ("readSideId: ok\nhost: [a, b]\nport: 1", "host must be a string (got a list)"),
        ("- just\n- a list", "must be a mapping of settings"),
    ],
)
def test_bad_yaml_definitions_stop_the_node_naming_the_read_side_and_setting(
    tmp_path: Path, document: str, expected: str
) -> None:
    config = tmp_path / "rs.yaml"
    config.write_text(document)
    error = config_error(COS_READ_SIDE_CONFIG=str(config))
    assert error.variable == "COS_READ_SIDE_CONFIG"
    assert "invalid read side configuration" in str(error)
    assert (expected % config if "%s" in expected else expected) in str(error)


def test_unparsable_yaml_and_missing_paths_and_duplicates_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("readSideId: [unclosed\n")
    assert "cannot parse" in str(config_error(COS_READ_SIDE_CONFIG=str(broken)))
    assert "no such file or folder" in str(config_error(COS_READ_SIDE_CONFIG=str(tmp_path / "nope")))
    twice = tmp_path / "twice"
    twice.mkdir()
    (twice / "1.yaml").write_text("readSideId: x\nhost: h\nport: 1\n")
    (twice / "2.yaml").write_text("readSideId: x\nhost: h\nport: 2\n")
    assert "defined twice" in str(config_error(COS_READ_SIDE_CONFIG=str(twice)))


# --------------------------------------------------------------------------------- environment variables


def test_variables_define_read_sides_with_the_id_kept_verbatim() -> None:
    (writer,) = read_sides(
        COS_READ_SIDE_CONFIG__HOST__DB_WRITER="db",
        COS_READ_SIDE_CONFIG__PORT__DB_WRITER="5000",
        COS_READ_SIDE_CONFIG__PROTOCOL__DB_WRITER="Http",
        COS_READ_SIDE_CONFIG__FAILURE_POLICY__DB_WRITER="replay_stop",
        COS_READ_SIDE_CONFIG__TIMEOUT__DB_WRITER="250",
        COS_READ_SIDE_CONFIG__USE_TLS__DB_WRITER="TRUE",
    )
    assert writer == ReadSideSettings(
        "DB_WRITER",
        "db",
        5000,
        protocol="http",
        use_tls=True,
        timeout_ms=250,
        failure_policy=FailurePolicy.REPLAY_STOP,
    )


def test_unparsable_values_take_upstreams_fallbacks_and_a_bad_auto_start_means_paused() -> None:
    (quirky,) = parse_env_definitions(
        {
            "COS_READ_SIDE_CONFIG__HOST__q": "h",
            "COS_READ_SIDE_CONFIG__PORT__q": "1",
            "COS_READ_SIDE_CONFIG__USE_TLS__q": "yes",
            "COS_READ_SIDE_CONFIG__TIMEOUT__q": "soon",
            "COS_READ_SIDE_CONFIG__ENABLED__q": "nope",
            "COS_READ_SIDE_CONFIG__AUTO_START__q": "on",
        }
    )
    assert (quirky.use_tls, quirky.timeout_ms, quirky.enabled, quirky.auto_start) == (
        False,
        30_000,
        True,
        False,
    )


@pytest.mark.parametrize(
    ("variables", "variable", "message"),
    [
        ({"COS_READ_SIDE_CONFIG__HOST": "h"}, "COS_READ_SIDE_CONFIG__HOST", "configurations is invalid"),
        (
            {"COS_READ_SIDE_CONFIG__HOST__a__b": "h"},
            "COS_READ_SIDE_CONFIG__HOST__a__b",
            "One or more of the read side configurations is invalid",
        ),
        # Java's split drops the trailing empty part, so an empty id is a malformed name.
        ({"COS_READ_SIDE_CONFIG__HOST__": "h"}, "COS_READ_SIDE_CONFIG__HOST__", "configurations is invalid"),
        (
            {"COS_READ_SIDE_CONFIG____x": "h"},
            "COS_READ_SIDE_CONFIG____x",
            "Setting must be defined in COS_READ_SIDE_CONFIG____x",
        ),
        (
            {"COS_READ_SIDE_CONFIG__COLOUR__x": "h"},
            "COS_READ_SIDE_CONFIG__COLOUR__x",
            "COLOUR is a not valid",
        ),
        (
            {"COS_READ_SIDE_CONFIG__PORT__x": "1"},
            "COS_READ_SIDE_CONFIG__HOST__x",
            "readside x is missing a HOST",
        ),
        (
            {"COS_READ_SIDE_CONFIG__HOST__x": "h", "COS_READ_SIDE_CONFIG__PORT__x": "0"},
            "COS_READ_SIDE_CONFIG__PORT__x",
            "readside x is missing a PORT",
        ),
        (
            {
                "COS_READ_SIDE_CONFIG__HOST__x": "h",
                "COS_READ_SIDE_CONFIG__PORT__x": "1",
                "COS_READ_SIDE_CONFIG__FAILURE_POLICY__x": "RETRY",
            },
            "COS_READ_SIDE_CONFIG__FAILURE_POLICY__x",
            "readside x failurePolicy is invalid.",
        ),
    ],
)
def test_bad_variables_stop_the_node_with_upstreams_messages(
    variables: dict[str, str], variable: str, message: str
) -> None:
    error = config_error(**variables)
    assert error.variable == variable
    assert message in str(error)


def test_no_definitions_is_allowed_with_a_warning() -> None:
    settings = load_settings(BASE)
    assert settings.read_sides.read_sides == ()
    assert any("none is defined" in warning for warning in settings.warnings)


def test_definitions_are_ignored_while_read_sides_are_disabled() -> None:
    settings = load_settings({**BASE, "COS_READ_SIDE_ENABLED": "false", "COS_READ_SIDE_CONFIG__BAD": "x"})
    assert not settings.read_sides.enabled and settings.read_sides.read_sides == ()


# ----------------------------------------------------------------------------------- delivery settings


def test_delivery_settings_defaults_and_overrides() -> None:
    defaults = load_settings(BASE).read_sides
    assert defaults.breaker is None
    assert defaults.delivery.replay_delay_s == 5.0 and defaults.delivery.batch_size == 500
    assert defaults.delivery.restart_backoff.minimum_s == 3.0
    assert defaults.delivery.restart_backoff.maximum_s == 30.0
    tuned = load_settings(
        {
            **BASE,
            "COS_READ_SIDE_REPLAY_DELAY": "100ms",
            "COS_READ_SIDE_POLL_INTERVAL": "1s",
            "COS_READ_SIDE_BREAKER_ENABLED": "true",
            "COS_READ_SIDE_BREAKER_MAX_FAILURES": "3",
        }
    ).read_sides
    assert tuned.delivery.replay_delay_s == 0.1 and tuned.delivery.poll_interval_s == 1.0
    assert tuned.breaker is not None and tuned.breaker.max_failures == 3
    assert tuned.breaker.call_timeout_s == 10.0 and tuned.breaker.reset_timeout_s == 60.0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("COS_READ_SIDE_BREAKER_MAX_FAILURES", "0"),
        ("COS_READ_SIDE_REPLAY_DELAY", "2h"),
        ("COS_READ_SIDE_BATCH_SIZE", "0"),
        ("COS_READ_SIDE_RESTART_MAX_BACKOFF", "1s"),
    ],
)
def test_bad_delivery_settings_are_refused(variable: str, value: str) -> None:
    env = {variable: value}
    if variable.startswith("COS_READ_SIDE_BREAKER"):
        env["COS_READ_SIDE_BREAKER_ENABLED"] = "true"
    assert config_error(**env).variable == variable
