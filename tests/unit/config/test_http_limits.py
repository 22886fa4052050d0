import pytest

from chiefofstate.config.http_limits import HttpLimits
from chiefofstate.config.settings import load_settings
from chiefofstate.core.errors import ConfigError

BASE = {"COS_WRITE_SIDE_HOST": "handler", "COS_WRITE_SIDE_PORT": "50051"}


def test_defaults_bound_every_phase_of_a_connection() -> None:
    limits = load_settings(BASE).http_limits
    assert limits == HttpLimits(
        max_connections=4096,
        max_header_bytes=32768,
        header_timeout_s=10.0,
        body_timeout_s=10.0,
        keep_alive_timeout_s=5.0,
    )


def test_each_limit_is_set_by_its_variable() -> None:
    limits = load_settings(
        {
            **BASE,
            "COS_HTTP_MAX_CONNECTIONS": "100",
            "COS_HTTP_MAX_HEADER_SIZE": "8192",
            "COS_HTTP_HEADER_TIMEOUT": "2s",
            "COS_HTTP_BODY_TIMEOUT": "1m",
            "COS_HTTP_KEEP_ALIVE_TIMEOUT": "500ms",
        }
    ).http_limits
    assert limits == HttpLimits(100, 8192, 2.0, 60.0, 0.5)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COS_HTTP_MAX_CONNECTIONS", "0", "at least 1"),
        ("COS_HTTP_MAX_HEADER_SIZE", "100", "at least 1024"),
        ("COS_HTTP_HEADER_TIMEOUT", "0s", "above 0"),
        ("COS_HTTP_BODY_TIMEOUT", "2h", "at most 3600s"),
        ("COS_HTTP_KEEP_ALIVE_TIMEOUT", "soon", "duration"),
    ],
)
def test_invalid_limits_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, variable: value})
    assert caught.value.variable == variable and message in str(caught.value)
