"""The admin console's settings (docs/console.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chiefofstate.config.parsing import Env
from chiefofstate.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    enabled: bool = True
    # a FileDescriptorSet of the application's messages; without it, the write handler's reflection
    descriptors: Path | None = None
    sample_interval_s: float = 5.0


def load_console_settings(env: Env) -> ConsoleSettings:
    descriptors = env.text("COS_CONSOLE_DESCRIPTORS", "").strip()
    interval_s = env.duration("COS_CONSOLE_SAMPLE_INTERVAL", "5s")
    if interval_s < 0.1:
        raise ConfigError("COS_CONSOLE_SAMPLE_INTERVAL", f"must be at least 100ms (got {interval_s:g}s)")
    return ConsoleSettings(
        enabled=env.boolean("COS_CONSOLE_ENABLED", True),
        descriptors=Path(descriptors) if descriptors else None,
        sample_interval_s=interval_s,
    )
