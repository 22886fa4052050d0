"""The admin console's settings (docs/console.md, "Settings")."""

from pathlib import Path

import pytest

from chiefofstate.config.settings import load_settings
from chiefofstate.core.errors import ConfigError

BASE = {"COS_WRITE_SIDE_HOST": "handler", "COS_WRITE_SIDE_PORT": "50051"}


def test_the_console_is_on_by_default_and_reads_the_handlers_reflection() -> None:
    console = load_settings(BASE).console
    assert console.enabled and console.descriptors is None and console.sample_interval_s == 5.0


def test_the_console_settings_are_read() -> None:
    console = load_settings(
        {
            **BASE,
            "COS_CONSOLE_ENABLED": "false",
            "COS_CONSOLE_DESCRIPTORS": "/etc/app/descriptors.pb",
            "COS_CONSOLE_SAMPLE_INTERVAL": "2s",
        }
    ).console
    assert not console.enabled
    assert console.descriptors == Path("/etc/app/descriptors.pb")
    assert console.sample_interval_s == 2.0


@pytest.mark.parametrize("value", ["0s", "10ms"])
def test_a_sample_interval_too_short_to_be_useful_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, "COS_CONSOLE_SAMPLE_INTERVAL": value})
    assert caught.value.variable == "COS_CONSOLE_SAMPLE_INTERVAL" and "at least 100ms" in str(caught.value)
