"""Read-side definitions and delivery settings (docs/contract.md §5.1, §10.5), validated once at start.

Definitions come from YAML (`COS_READ_SIDE_CONFIG`: a file, or a folder read recursively, each file
possibly holding several `---`-separated documents) or, when that variable is empty, from
`COS_READ_SIDE_CONFIG__<SETTING>__<ID>` variables parsed with upstream's rules and quirks. Anything
invalid raises `ConfigError` with one line naming the read side and the setting (decision D9).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chiefofstate.config.parsing import Env
from chiefofstate.core.breaker import BreakerSettings
from chiefofstate.core.errors import ConfigError
from chiefofstate.core.readside_rules import Backoff, FailurePolicy

CONFIG_VARIABLE = "COS_READ_SIDE_CONFIG"
ENV_PREFIX = "COS_READ_SIDE_CONFIG__"
DEFAULT_TIMEOUT_MS = 30_000
PROTOCOLS = ("grpc", "http")
_ID_PATTERN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?")
_ENV_SETTINGS = ("PROTOCOL", "HOST", "PORT", "USE_TLS", "TIMEOUT", "AUTO_START", "ENABLED", "FAILURE_POLICY")
_JAVA_INT = re.compile(r"[+-]?[0-9]+")
_POLICY_NAMES = ", ".join(policy.value for policy in FailurePolicy)


@dataclass(frozen=True, slots=True)
class ReadSideSettings:
    """One read side (docs/contract.md §5.1), with upstream's defaults."""

    read_side_id: str
    host: str
    port: int
    protocol: str = "grpc"
    use_tls: bool = False
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    auto_start: bool = True
    enabled: bool = True
    failure_policy: FailurePolicy = FailurePolicy.STOP

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """How projections run: this project's variables (upstream hard-codes its equivalents)."""

    replay_delay_s: float = 5.0  # pause between REPLAY_* attempts; upstream's fixed 5 s
    batch_size: int = 500  # journal rows per read; upstream's query limit
    poll_interval_s: float = 2.0  # safety net when no wake-up arrives
    max_concurrency: int = 64  # handler calls and journal reads in flight on the node
    commit_batch: int = 100  # events handled before the offset is stored
    commit_interval_s: float = 0.25  # ...or time since the last store, whichever comes first
    restart_backoff: Backoff = field(default_factory=Backoff)


@dataclass(frozen=True, slots=True)
class ReadSidesSettings:
    enabled: bool = False
    read_sides: tuple[ReadSideSettings, ...] = ()
    breaker: BreakerSettings | None = None
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    source: str = ""  # where the definitions came from, for the start-up log
    warnings: tuple[str, ...] = ()


def load_read_sides(env: Env, *, enabled: bool, breaker: BreakerSettings | None) -> ReadSidesSettings:
    """Everything read sides need; definitions are only read when read sides are enabled, as upstream."""
    if not enabled:
        return ReadSidesSettings()
    path = env.text(CONFIG_VARIABLE, "").strip()
    if path:
        definitions, warnings = read_yaml_definitions(Path(path))
        source = f"{CONFIG_VARIABLE}={path}"
    else:
        definitions = parse_env_definitions(env.values)
        warnings = []
        source = f"{ENV_PREFIX}* variables"
    if not definitions:
        warnings.append(f"read sides are enabled but none is defined ({source})")
    return ReadSidesSettings(
        enabled=True,
        read_sides=tuple(definitions),
        breaker=breaker,
        delivery=_delivery(env),
        source=source,
        warnings=tuple(warnings),
    )


def _delivery(env: Env) -> DeliverySettings:
    minimum = _bounded_duration(env, "COS_READ_SIDE_RESTART_MIN_BACKOFF", "3s", 0.001, 3600)
    maximum = _bounded_duration(env, "COS_READ_SIDE_RESTART_MAX_BACKOFF", "30s", 0.001, 3600)
    if maximum < minimum:
        raise ConfigError(
            "COS_READ_SIDE_RESTART_MAX_BACKOFF",
            f"must not be below COS_READ_SIDE_RESTART_MIN_BACKOFF ({maximum}s < {minimum}s)",
        )
    return DeliverySettings(
        replay_delay_s=_bounded_duration(env, "COS_READ_SIDE_REPLAY_DELAY", "5s", 0, 3600),
        batch_size=env.integer("COS_READ_SIDE_BATCH_SIZE", 500, minimum=1, maximum=10_000),
        poll_interval_s=_bounded_duration(env, "COS_READ_SIDE_POLL_INTERVAL", "2s", 0.01, 3600),
        max_concurrency=env.integer("COS_READ_SIDE_MAX_CONCURRENCY", 64, minimum=1, maximum=10_000),
        commit_batch=env.integer("COS_READ_SIDE_COMMIT_BATCH", 100, minimum=1, maximum=100_000),
        commit_interval_s=_bounded_duration(env, "COS_READ_SIDE_COMMIT_INTERVAL", "250ms", 0, 3600),
        restart_backoff=Backoff(minimum_s=minimum, maximum_s=maximum),
    )


def _bounded_duration(env: Env, name: str, default: str, low: float, high: float) -> float:
    value = env.duration(name, default)
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low}s and {high}s (got {value}s)")
    return value


# --------------------------------------------------------------------------------------------- YAML


def read_yaml_definitions(path: Path) -> tuple[list[ReadSideSettings], list[str]]:
    """A file, or every regular file under a folder whatever its extension (upstream reads them all)."""
    if path.is_dir():
        files = sorted(candidate for candidate in path.rglob("*") if candidate.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(CONFIG_VARIABLE, f"no such file or folder: {path}")
    definitions: list[ReadSideSettings] = []
    warnings: list[str] = []
    seen: dict[str, str] = {}
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            warnings.append(f"{CONFIG_VARIABLE}: skipped unreadable file {file}: {error}")
            continue
        for place, definition in parse_yaml_documents(text, str(file)):
            if definition.read_side_id in seen:
                raise ConfigError(
                    CONFIG_VARIABLE,
                    f"invalid read side configuration: read side '{definition.read_side_id}' is defined "
                    f"twice ({seen[definition.read_side_id]} and {place})",
                )
            seen[definition.read_side_id] = place
            definitions.append(definition)
    return definitions, warnings


def parse_yaml_documents(text: str, origin: str) -> list[tuple[str, ReadSideSettings]]:
    """(where, definition) for every non-empty document of one YAML text."""
    import yaml  # here: most nodes define no read side, and the parser is a share of start-up

    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        summary = " ".join(str(error).split())
        raise ConfigError(CONFIG_VARIABLE, f"cannot parse {origin} as YAML: {summary}") from None
    parsed = []
    for number, document in enumerate(documents, start=1):
        if document is None:
            continue  # an empty document, e.g. before a leading `---`
        place = f"{origin}, document {number}"
        parsed.append((place, parse_yaml_definition(document, place)))
    return parsed


def parse_yaml_definition(document: object, place: str) -> ReadSideSettings:
    """One YAML document: camelCase keys, unknown keys ignored (docs/contract.md §5.1)."""

    def fail(read_side: str | None, problem: str) -> ConfigError:
        who = f"read side '{read_side}' ({place})" if read_side else place
        return ConfigError(CONFIG_VARIABLE, f"invalid read side configuration: {who}: {problem}")

    if not isinstance(document, Mapping):
        raise fail(None, f"must be a mapping of settings (got {_yaml_type(document)})")
    values = {key: value for key, value in document.items() if value is not None}
    raw_id = values.get("readSideId")
    if raw_id is None:
        raise fail(None, "readSideId is required")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise fail(None, f"readSideId must be a string (got {_yaml_type(raw_id)})")
    read_side_id = str(raw_id)
    if _ID_PATTERN.fullmatch(read_side_id) is None:
        raise fail(
            read_side_id,
            f"readSideId must be letters and digits with '-' or '_' only inside (got {read_side_id!r})",
        )

    def text(key: str) -> str | None:
        value = values.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise fail(read_side_id, f"{key} must be a string (got {_yaml_type(value)})")
        return str(value)

    def integer(key: str, default: int | None, low: int, high: int) -> int:
        value = values.get(key)
        if value is None:
            if default is None:
                raise fail(read_side_id, f"{key} is required")
            return default
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _JAVA_INT.fullmatch(value.strip()):
            number = int(value.strip())
        if number is None or not low <= number <= high:
            raise fail(read_side_id, f"{key} must be a whole number from {low} to {high} (got {value!r})")
        return number

    def boolean(key: str, default: bool) -> bool:
        value = values.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise fail(read_side_id, f"{key} must be true or false (got {value!r})")

    protocol = (text("protocol") or "grpc").strip().lower()
    if protocol not in PROTOCOLS:
        raise fail(read_side_id, f"protocol must be grpc or http (got {values.get('protocol')!r})")
    host = (text("host") or "").strip()
    if not host:
        raise fail(read_side_id, "host is required")
    policy_text = text("failurePolicy") or ""
    policy = FailurePolicy.parse(policy_text)
    if policy is None:
        raise fail(read_side_id, f"failurePolicy must be one of {_POLICY_NAMES} (got {policy_text!r})")
    return ReadSideSettings(
        read_side_id=read_side_id,
        protocol=protocol,
        host=host,
        port=integer("port", None, 1, 65535),
        use_tls=boolean("useTls", False),
        timeout_ms=integer("timeout", DEFAULT_TIMEOUT_MS, 1, 2**31 - 1),
        auto_start=boolean("autoStart", True),
        enabled=boolean("enabled", True),
        failure_policy=policy,
    )


def _yaml_type(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


# ---------------------------------------------------------------------------- environment variables


def _java_split(text: str, separator: str) -> list[str]:
    """Java's String.split: trailing empty strings are dropped, which upstream's checks rely on."""
    parts = text.split(separator)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _scala_boolean(value: str) -> bool | None:
    """Scala's `toBoolean`: exactly true/false in any case; anything else does not parse."""
    lowered = value.lower()
    return {"true": True, "false": False}.get(lowered)


def _java_int(value: str) -> int | None:
    if _JAVA_INT.fullmatch(value) is None or not -(2**31) <= int(value) <= 2**31 - 1:
        return None
    return int(value)


def parse_env_definitions(environ: Mapping[str, str]) -> list[ReadSideSettings]:
    """`COS_READ_SIDE_CONFIG__<SETTING>__<ID>` variables with upstream's rules (docs/contract.md §5.1, §14
    #12):
    the id is kept verbatim and not checked, and a bad AUTO_START means paused."""
    names = sorted(name for name in environ if name.startswith(ENV_PREFIX))
    for name in names:
        if len(_java_split(name, "__")) != 3:
            raise ConfigError(name, "One or more of the read side configurations is invalid")
    grouped: dict[str, list[tuple[str, str, str]]] = {}
    for name in names:
        _, setting, read_side_id = _java_split(name, "__")
        if not setting:
            raise ConfigError(name, f"Setting must be defined in {name}")
        if setting not in _ENV_SETTINGS:
            raise ConfigError(name, f"{setting} is a not valid read side env var key")
        grouped.setdefault(read_side_id, []).append((name, setting, environ[name]))
    return [_env_definition(read_side_id, entries) for read_side_id, entries in grouped.items()]


def _env_definition(read_side_id: str, entries: Iterable[tuple[str, str, str]]) -> ReadSideSettings:
    values = {setting: (name, value) for name, setting, value in entries}

    def name_of(setting: str) -> str:
        return values.get(setting, (f"{ENV_PREFIX}{setting}__{read_side_id}", ""))[0]

    def raw(setting: str) -> str | None:
        return values[setting][1] if setting in values else None

    host = (raw("HOST") or "").strip()
    if not host:
        raise ConfigError(name_of("HOST"), f"readside {read_side_id} is missing a HOST")
    port = _java_int((raw("PORT") or "").strip())
    if port is None or not 1 <= port <= 65535:
        raise ConfigError(name_of("PORT"), f"readside {read_side_id} is missing a PORT")
    protocol = (raw("PROTOCOL") or "grpc").strip().lower()
    if protocol not in PROTOCOLS:
        raise ConfigError(name_of("PROTOCOL"), f"readside {read_side_id} protocol must be grpc or http")
    policy = FailurePolicy.STOP
    if raw("FAILURE_POLICY") is not None:
        parsed = FailurePolicy.parse(raw("FAILURE_POLICY") or "")
        if parsed is None or not (raw("FAILURE_POLICY") or "").strip():
            raise ConfigError(name_of("FAILURE_POLICY"), f"readside {read_side_id} failurePolicy is invalid.")
        policy = parsed
    timeout = _java_int((raw("TIMEOUT") or "").strip())
    if timeout is not None and timeout <= 0:
        # Upstream would pass a non-positive deadline on and fail every call; refuse it instead.
        raise ConfigError(name_of("TIMEOUT"), f"readside {read_side_id} timeout must be above 0 ms")

    def flag(setting: str, unparsable: bool) -> bool:
        value = raw(setting)
        parsed = None if value is None else _scala_boolean(value.strip())
        if value is None:
            return {"USE_TLS": False, "AUTO_START": True, "ENABLED": True}[setting]
        return unparsable if parsed is None else parsed

    return ReadSideSettings(
        read_side_id=read_side_id,
        protocol=protocol,
        host=host,
        port=port,
        use_tls=flag("USE_TLS", False),
        timeout_ms=DEFAULT_TIMEOUT_MS if timeout is None else timeout,
        auto_start=flag("AUTO_START", False),  # upstream quirk: an unparsable AUTO_START means paused
        enabled=flag("ENABLED", True),
        failure_policy=policy,
    )
