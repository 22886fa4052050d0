"""Parsing of the value syntaxes upstream accepts: HOCON booleans and durations (docs/contract.md §10)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from chiefofstate.core.errors import ConfigError

_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}

# HOCON duration units, in seconds; a bare number means milliseconds.
_UNITS = {
    **dict.fromkeys(["ns", "nano", "nanos", "nanosecond", "nanoseconds"], 1e-9),
    **dict.fromkeys(["us", "micro", "micros", "microsecond", "microseconds"], 1e-6),
    **dict.fromkeys(["ms", "milli", "millis", "millisecond", "milliseconds", ""], 1e-3),
    **dict.fromkeys(["s", "second", "seconds"], 1.0),
    **dict.fromkeys(["m", "minute", "minutes"], 60.0),
    **dict.fromkeys(["h", "hour", "hours"], 3600.0),
    **dict.fromkeys(["d", "day", "days"], 86400.0),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True, slots=True)
class VariableRead:
    """How one variable was read: what docs/configuration.md is generated from."""

    name: str
    kind: str  # text, boolean, integer, port, duration, choice, list
    default: str
    accepted: str  # in words, e.g. "1 to 300", "grpc, http, both"


class LookedUp(Mapping[str, str]):
    """An environment that remembers which names were asked for, so that a variable set but read by no
    setting can be reported at start."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values
        self.names: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.names.add(key)
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.names.add(key)
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{minimum} to {maximum}"
    if minimum is not None:
        return f"at least {minimum}"
    return "a whole number" if maximum is None else f"at most {maximum}"


class Env:
    """Typed reads of an environment mapping; every error names the variable. Each read is noted in
    `reads` (the first read of a name wins), which is what the configuration reference is made from."""

    def __init__(self, values: Mapping[str, str], reads: dict[str, VariableRead] | None = None) -> None:
        self.values = values
        self.reads: dict[str, VariableRead] = {} if reads is None else reads
        # Values accepted as upstream accepts them but changed on the way (capped, clamped): said once
        # at start-up, with the other configuration warnings.
        self.adjusted: list[str] = []

    def _note(self, name: str, kind: str, default: object, accepted: str) -> None:
        if name not in self.reads:
            self.reads[name] = VariableRead(name, kind, str(default), accepted)

    def text(self, name: str, default: str) -> str:
        self._note(name, "text", default, "any text")
        return self.values.get(name, default)

    def boolean(self, name: str, default: bool) -> bool:
        self._note(name, "boolean", str(default).lower(), "true/false, yes/no, on/off")
        raw = self.values.get(name)
        if raw is None or raw.strip() == "":
            return default
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(name, f"must be true or false (got {raw!r})")

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        self._note(name, "integer", default, _bounds(minimum, maximum))
        raw = self.values.get(name)
        if raw is None or raw.strip() == "":
            value = default
        else:
            try:
                value = int(raw.strip())
            except ValueError:
                raise ConfigError(name, f"must be a whole number (got {raw!r})") from None
        if minimum is not None and value < minimum:
            raise ConfigError(name, f"must be at least {minimum} (got {value})")
        if maximum is not None and value > maximum:
            raise ConfigError(name, f"must be at most {maximum} (got {value})")
        return value

    def port(self, name: str, default: int) -> int:
        self._note(name, "port", default, "0 to 65535")
        return self.integer(name, default, minimum=0, maximum=65535)

    def duration(self, name: str, default: str) -> float:
        """Seconds, from HOCON syntax (`500ms`, `10s`, `1m`; a bare number is milliseconds)."""
        self._note(name, "duration", default, "a duration (500ms, 10s, 1m; a bare number is ms)")
        raw = self.values.get(name)
        text = default if raw is None or raw.strip() == "" else raw
        match = _DURATION.match(text)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ConfigError(name, f"must be a duration such as 500ms, 10s or 1m (got {text!r})")
        return float(match.group(1)) * _UNITS[unit]

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        self._note(name, "choice", default, ", ".join(allowed) + " (any case)")
        raw = self.values.get(name)
        value = default if raw is None or raw.strip() == "" else raw.strip().lower()
        if value not in allowed:
            raise ConfigError(name, f"must be one of {', '.join(allowed)} (got {raw!r})")
        return value

    def csv(self, name: str) -> tuple[str, ...]:
        self._note(name, "list", "", "comma-separated names")
        seen: dict[str, None] = {}
        for part in self.values.get(name, "").split(","):
            if part.strip():
                seen.setdefault(part.strip(), None)
        return tuple(seen)
