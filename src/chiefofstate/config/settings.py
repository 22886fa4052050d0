"""Every variable the node reads, validated once at start into frozen settings (docs/contract.md §10).

Nothing below the composition root reads the environment: the node passes these objects down.
Any invalid value raises `ConfigError` naming the variable (decision D9).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from chiefofstate.config.cluster import (
    CLUSTER_OFF,
    ClusterSettings,
    load_cluster_settings,
    unused_cluster_variables,
)
from chiefofstate.config.console import ConsoleSettings, load_console_settings
from chiefofstate.config.grpc_limits import GrpcLimits, load_grpc_limits
from chiefofstate.config.http_limits import HttpLimits, load_http_limits
from chiefofstate.config.parsing import Env, LookedUp, VariableRead
from chiefofstate.config.read_sides import ENV_PREFIX, ReadSidesSettings, load_read_sides
from chiefofstate.config.security import SecuritySettings, load_security_settings
from chiefofstate.config.tracing import TracingSettings, tracing_settings
from chiefofstate.config.workers import (
    WorkerSettings,
    check_room_for_workers,
    check_shared_ports,
    load_worker_settings,
    offset_port,
)
from chiefofstate.core.breaker import BreakerSettings
from chiefofstate.core.command_rules import ProtoValidation
from chiefofstate.core.errors import ConfigError
from chiefofstate.core.headers import parse_header_list
from chiefofstate.core.snapshots import SnapshotPolicy


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    host: str
    port: int
    database: str
    user: str
    password: str
    schema: str
    pool_max_size: int
    pool_min_idle: int
    pool_idle_timeout_s: float
    pool_max_lifetime_s: float
    connect_timeout_s: float
    startup_retries: int


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """PostgreSQL when COS_DB_HOST is set, otherwise the embedded SQLite file (decision D10)."""

    postgres: DatabaseSettings | None
    sqlite_path: Path
    migrations_initial_version: str | None


@dataclass(frozen=True, slots=True)
class WriteSideSettings:
    protocol: str
    host: str
    port: int
    use_tls: bool
    call_timeout_s: float
    channel_pool_size: int
    keepalive_enabled: bool
    keepalive_time_s: int
    keepalive_timeout_s: int
    keepalive_without_calls: bool
    propagated_headers: tuple[str, ...]
    persisted_headers: tuple[str, ...]
    validation: ProtoValidation
    breaker: BreakerSettings | None
    legacy_headers_data: bool = False


@dataclass(frozen=True, slots=True)
class EntitySettings:
    cache_capacity: int
    idle_timeout_s: float  # 0 = never passivate for idleness
    mailbox_capacity: int


@dataclass(frozen=True, slots=True)
class JournalWriterSettings:
    max_batch: int
    max_pending: int


@dataclass(frozen=True, slots=True)
class ServerSettings:
    protocol: str
    address: str
    port: int
    http_address: str
    http_port: int
    management_port: int
    command_timeout_s: float
    max_message_bytes: int
    shutdown_timeout_s: float
    prometheus_port: int
    health_check_interval_s: float
    event_loop: str = "uvloop"
    # SO_REUSEPORT on the client-facing ports: only a worker shares them, with its siblings; a lone
    # node must fail to bind a port another process holds rather than silently share it.
    reuse_port: bool = False
    management_address: str = "0.0.0.0"
    prometheus_address: str = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    """Bounds of live subscriptions (this project's variables; upstream has none)."""

    buffer_size: int = 1000  # events waiting for one subscriber before it is ended
    max_subscriptions: int = 10_000  # open subscription streams per node
    write_timeout_s: float = 10.0  # a write into one stream blocked this long ends the subscriber


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str
    style: str
    service_name: str


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings
    store: StoreSettings
    write_side: WriteSideSettings
    entities: EntitySettings
    journal_writer: JournalWriterSettings
    snapshots: SnapshotPolicy
    logging: LoggingSettings
    num_shards: int
    deployment_mode: str
    read_side_enabled: bool
    subscription_enabled: bool
    warnings: tuple[str, ...] = field(default=())
    subscriptions: SubscriptionSettings = field(default=SubscriptionSettings())
    read_sides: ReadSidesSettings = field(default=ReadSidesSettings())
    tracing: TracingSettings = field(default=TracingSettings(enabled=False, service_name="chiefofstate"))
    cluster: ClusterSettings = field(default=CLUSTER_OFF)
    workers: WorkerSettings = field(default=WorkerSettings())
    http_limits: HttpLimits = field(default=HttpLimits())
    grpc_limits: GrpcLimits = field(default=GrpcLimits())
    security: SecuritySettings = field(default=SecuritySettings())
    console: ConsoleSettings = field(default=ConsoleSettings())


RETIRED_VARIABLES = (
    "COS_TELEMETRY_NAMESPACE",
    "COS_TELEMETRY_COLLECTOR_ENDPOINT",
    "COS_TRACE_PROPAGATORS",
    "COS_ENCRYPTION_CLASS",
    "COS_EVENTS_BATCH_THRESHOLD",
    "COS_DB_CREATE_TABLES",
    # Namely-era releases (plugins, a separate read-side offset database, older names)
    "COS_ENABLED_PLUGINS",
    "COS_ENABLE_PLUGINS",
    "COS_KUBERNETES_REPLICA_COUNT",
    "COS_DOCKER_SERVICE_NAME",
    "COS_DOCKER_REPLICA_COUNT",
    "COS_JAEGER_ENABLED",
    "COS_KAFKA_BROKER",
    "COS_PROMETHEUS_ROUTE",
    "COS_STORES_AUTO_CREATE",
    "COS_EVENTS_TAG_NAME",
    "COS_WRITE_PROPAGATED_HEADERS",
)
# Whole families of Namely-era variables: the read-side offset store's own database and the
# pre-COS_DB_* PostgreSQL settings.
RETIRED_PREFIXES = ("COS_READ_SIDE_OFFSET_", "COS_POSTGRES_")

# Upstream's gRPC client pool accepts any size; more than this many channels to one handler buys
# nothing, so a larger value is capped (and said) rather than refused.
MAX_CHANNEL_POOL_SIZE = 64


def is_retired(name: str) -> bool:
    return name in RETIRED_VARIABLES or name.startswith(RETIRED_PREFIXES)


def _breaker(env: Env, prefix: str, call_timeout_default: str) -> BreakerSettings | None:
    if not env.boolean(f"{prefix}_ENABLED", False):
        return None
    max_failures = env.integer(f"{prefix}_MAX_FAILURES", 5, minimum=1, maximum=100)
    call_timeout = env.duration(f"{prefix}_CALL_TIMEOUT", call_timeout_default)
    if not 0 < call_timeout <= 300:
        raise ConfigError(f"{prefix}_CALL_TIMEOUT", f"must be above 0 and at most 5m (got {call_timeout}s)")
    reset_timeout = env.duration(f"{prefix}_RESET_TIMEOUT", "1m")
    if not 1 <= reset_timeout <= 3600:
        raise ConfigError(f"{prefix}_RESET_TIMEOUT", f"must be between 1s and 1h (got {reset_timeout}s)")
    return BreakerSettings(
        max_failures=max_failures, call_timeout_s=call_timeout, reset_timeout_s=reset_timeout
    )


def _server(env: Env) -> ServerSettings:
    address = env.text("COS_ADDRESS", "0.0.0.0")
    return ServerSettings(
        protocol=env.choice("COS_SERVER_PROTOCOL", "grpc", ("grpc", "http", "both")),
        address=address,
        port=env.port("COS_PORT", 9000),
        http_address=env.text("COS_HTTP_ADDRESS", "0.0.0.0"),
        http_port=env.port("COS_HTTP_PORT", 9001),
        management_port=env.port("COS_MANAGEMENT_PORT", 8558),
        command_timeout_s=float(env.integer("COS_COMMAND_HANDLER_TIMEOUT", 5, minimum=1, maximum=300)),
        max_message_bytes=env.integer("COS_MAX_MESSAGE_SIZE", 4 * 1024 * 1024, minimum=1024),
        shutdown_timeout_s=env.duration("COS_SHUTDOWN_TIMEOUT", "20s"),
        prometheus_port=env.port("COS_PROMETHEUS_PORT", 9102),
        health_check_interval_s=env.duration("COS_HEALTH_CHECK_INTERVAL", "2s"),
        event_loop=env.choice("COS_EVENT_LOOP", "uvloop", ("uvloop", "asyncio")),
        # The operator ports follow COS_ADDRESS unless given their own (docs/operations.md, "Security").
        management_address=env.text("COS_MANAGEMENT_ADDRESS", address).strip() or address,
        prometheus_address=env.text("COS_PROMETHEUS_ADDRESS", address).strip() or address,
    )


def _store(env: Env) -> StoreSettings:
    host = env.text("COS_DB_HOST", "").strip()
    postgres = None
    if host:
        postgres = DatabaseSettings(
            host=host,
            port=env.port("COS_DB_PORT", 5432),
            database=env.text("COS_DB_NAME", "postgres"),
            user=env.text("COS_DB_USER", "postgres"),
            password=env.text("COS_DB_PASSWORD", "changeme"),
            schema=env.text("COS_DB_SCHEMA", "public") or "public",
            pool_max_size=env.integer("COS_DB_POOL_MAX_SIZE", 5, minimum=1),
            pool_min_idle=env.integer("COS_DB_POOL_MIN_IDLE_CONNECTIONS", 1, minimum=0),
            pool_idle_timeout_s=env.integer("COS_DB_POOL_IDLE_TIMEOUT_MS", 60000, minimum=0) / 1000,
            pool_max_lifetime_s=env.integer("COS_DB_POOL_MAX_LIFETIME_MS", 120000, minimum=0) / 1000,
            connect_timeout_s=env.duration("COS_DB_CONNECT_TIMEOUT", "5s"),
            startup_retries=env.integer("COS_DB_STARTUP_RETRIES", 5, minimum=0),
        )
        if postgres.pool_min_idle > postgres.pool_max_size:
            # as upstream's pool does: the idle minimum is clamped to the pool's size
            env.adjusted.append(
                f"COS_DB_POOL_MIN_IDLE_CONNECTIONS={postgres.pool_min_idle} exceeds "
                f"COS_DB_POOL_MAX_SIZE={postgres.pool_max_size}; using {postgres.pool_max_size}"
            )
            postgres = replace(postgres, pool_min_idle=postgres.pool_max_size)
    initial = env.values.get("COS_MIGRATIONS_INITIAL_VERSION")
    return StoreSettings(
        postgres=postgres,
        sqlite_path=Path(env.text("COS_DB_PATH", "./cos.db") or "./cos.db"),
        migrations_initial_version=initial,
    )


def _write_side(env: Env, *, require_target: bool) -> WriteSideSettings:
    protocol = env.choice("COS_WRITE_SIDE_PROTOCOL", "grpc", ("grpc", "http", "both"))
    if protocol == "both":
        # Upstream accepts this and then never finishes starting (docs/contract.md §14 #21); refuse it up
        # front.
        raise ConfigError(
            "COS_WRITE_SIDE_PROTOCOL",
            "Write-side protocol 'both' is not currently supported. Use 'grpc' or 'http'",
        )
    host = env.text("COS_WRITE_SIDE_HOST", "").strip()
    port = env.integer("COS_WRITE_SIDE_PORT", -1)
    if require_target and not host:
        raise ConfigError("COS_WRITE_SIDE_HOST", "must name the write handler's host")
    if require_target and not 1 <= port <= 65535:
        raise ConfigError("COS_WRITE_SIDE_PORT", f"must be a port between 1 and 65535 (got {port})")
    keepalive = _keepalive(env)
    return WriteSideSettings(
        protocol=protocol,
        host=host,
        port=port,
        use_tls=env.boolean("COS_WRITE_SIDE_USE_TLS", False),
        call_timeout_s=env.integer("COS_GRPC_CALLS_TIMEOUT", 60000, minimum=1) / 1000,
        channel_pool_size=_channel_pool_size(env),
        keepalive_enabled=keepalive.enabled,
        keepalive_time_s=keepalive.time_s,
        keepalive_timeout_s=keepalive.timeout_s,
        keepalive_without_calls=keepalive.without_calls,
        propagated_headers=parse_header_list(env.text("COS_WRITE_SIDE_PROPAGATED_HEADERS", "")),
        persisted_headers=parse_header_list(env.text("COS_WRITE_PERSISTED_HEADERS", "")),
        validation=ProtoValidation(
            enabled=env.boolean("COS_WRITE_SIDE_PROTO_VALIDATION", False),
            event_names=frozenset(env.csv("COS_WRITE_SIDE_EVENT_PROTOS")),
            state_names=frozenset(env.csv("COS_WRITE_SIDE_STATE_PROTOS")),
        ),
        breaker=_breaker(env, "COS_WRITE_SIDE_BREAKER", "60s"),
        legacy_headers_data=env.boolean("COS_LEGACY_PERSISTED_HEADERS", False),
    )


def _channel_pool_size(env: Env) -> int:
    size = env.integer("COS_GRPC_CLIENT_POOL_SIZE", 1, minimum=1)
    if size > MAX_CHANNEL_POOL_SIZE:
        env.adjusted.append(
            f"COS_GRPC_CLIENT_POOL_SIZE={size} is more channels than help; using {MAX_CHANNEL_POOL_SIZE}"
        )
        return MAX_CHANNEL_POOL_SIZE
    return size


class _Keepalive(NamedTuple):
    enabled: bool = False
    time_s: int = 120
    timeout_s: int = 60
    without_calls: bool = True


def _keepalive(env: Env) -> _Keepalive:
    """The write-handler channels' keepalive. Its other values are read only when it is on: upstream
    ignores them otherwise, so a value it would never parse must not stop this node either (it is then
    named in the start-up line about variables set but not used)."""
    if not env.boolean("COS_GRPC_KEEPALIVE_ENABLED", False):
        return _Keepalive()
    return _Keepalive(
        enabled=True,
        time_s=int(env.duration("COS_GRPC_KEEPALIVE_TIME", "120s")),
        timeout_s=int(env.duration("COS_GRPC_KEEPALIVE_TIMEOUT", "60s")),
        without_calls=env.boolean("COS_GRPC_KEEPALIVE_WITHOUT_CALLS", True),
    )


def _snapshots(env: Env) -> SnapshotPolicy:
    disabled = env.boolean("COS_DISABLE_SNAPSHOT", False)
    if disabled:
        return SnapshotPolicy(enabled=False, frequency=0, retain=0, delete_events=False)
    return SnapshotPolicy(
        enabled=True,
        frequency=env.integer("COS_SNAPSHOT_FREQUENCY", 100, minimum=1),
        retain=env.integer("COS_NUM_SNAPSHOTS_TO_RETAIN", 2, minimum=1, maximum=100),
        delete_events=env.boolean("COS_JOURNAL_LOGICAL_DELETION", False),
    )


def _logging(env: Env) -> LoggingSettings:
    # Upstream's logger also takes TRACE and ALL (both mean "everything": DEBUG here) and OFF.
    level = env.choice(
        "LOG_LEVEL", "warn", ("trace", "all", "debug", "info", "warn", "warning", "error", "off")
    )
    service = env.text("COS_SERVICE_NAME", "chiefofstate")
    if not service or len(service) > 64:
        raise ConfigError("COS_SERVICE_NAME", f"must be 1 to 64 characters (got {len(service)})")
    return LoggingSettings(
        level={"warn": "WARNING", "warning": "WARNING", "trace": "DEBUG", "all": "DEBUG"}.get(
            level, level.upper()
        ),
        style=env.choice("LOG_STYLE", "json", ("json", "standard", "simple")).upper(),
        service_name=service,
    )


def _num_shards(env: Env) -> int:
    shards = env.integer("COS_NUM_SHARDS", 16, minimum=1, maximum=10000)
    if shards & (shards - 1):
        raise ConfigError("COS_NUM_SHARDS", f"must be a power of two (got {shards})")
    return shards


def _deployment_mode(env: Env) -> str:
    raw = env.values.get("COS_DEPLOYMENT_MODE", "docker")
    if raw.strip() == "":
        raise ConfigError("COS_DEPLOYMENT_MODE", "unrecognized deployment mode, ''")
    try:
        return env.choice("COS_DEPLOYMENT_MODE", "docker", ("docker", "kubernetes"))
    except ConfigError:
        # upstream's wording
        raise ConfigError(
            "COS_DEPLOYMENT_MODE", f"unrecognized deployment mode, '{raw.strip().lower()}'"
        ) from None


# Features whose switches are parsed with upstream's names but which this release does not serve yet:
# refusing them at start is honest, where accepting them would silently drop work (decision D9).
_NOT_YET_SUPPORTED: dict[tuple[str, str], str] = {}


def _refuse_unsupported(settings: Settings) -> None:
    chosen = {
        ("COS_SERVER_PROTOCOL", settings.server.protocol),
        ("COS_WRITE_SIDE_PROTOCOL", settings.write_side.protocol),
        ("COS_READ_SIDE_ENABLED", str(settings.read_side_enabled).lower()),
        ("COS_SUBSCRIPTION_ENABLED", str(settings.subscription_enabled).lower()),
    }
    for (variable, value), feature in _NOT_YET_SUPPORTED.items():
        if (variable, value) in chosen:
            raise ConfigError(variable, f"{feature}: not available in this release (got {value!r})")


def _with_workers(settings: Settings) -> Settings:
    """Checks the ports a supervisor's workers will use, and gives a worker its own: it shares the
    client-facing ports with its siblings, and offsets by its index the ports each must have alone (the
    cluster port peers dial, the Prometheus port scraped per process)."""
    workers, server, cluster = settings.workers, settings.server, settings.cluster
    own_ports = {"COS_CLUSTER_PORT": cluster.port, "COS_PROMETHEUS_PORT": server.prometheus_port}
    own_ports["COS_CLUSTER_ADVERTISED_PORT"] = cluster.advertised_port
    if workers.count > 1:
        shared = {"COS_MANAGEMENT_PORT": server.management_port}
        if server.protocol in ("grpc", "both"):
            shared["COS_PORT"] = server.port
        if server.protocol in ("http", "both"):
            shared["COS_HTTP_PORT"] = server.http_port
        check_shared_ports(shared)
        check_room_for_workers(own_ports, workers.count)
    if workers.index is None:
        return settings
    index = workers.index
    return replace(
        settings,
        server=replace(
            server,
            reuse_port=True,
            prometheus_port=offset_port("COS_PROMETHEUS_PORT", server.prometheus_port, index),
        ),
        cluster=replace(
            cluster,
            port=offset_port("COS_CLUSTER_PORT", cluster.port, index),
            advertised_port=offset_port("COS_CLUSTER_ADVERTISED_PORT", cluster.advertised_port, index),
        ),
    )


def load_logging_settings(environ: Mapping[str, str]) -> LoggingSettings:
    """Logging settings alone, so that even a configuration error can be logged in the chosen style."""
    return _logging(Env(environ))


def _subscription_write_timeout(env: Env) -> float:
    timeout_s = env.duration("COS_SUBSCRIPTION_WRITE_TIMEOUT", "10s")
    if not 0.1 <= timeout_s <= 3600:
        raise ConfigError(
            "COS_SUBSCRIPTION_WRITE_TIMEOUT", f"must be between 100ms and 1h (got {timeout_s}s)"
        )
    return timeout_s


def _set_but_unused(environ: Mapping[str, str], looked_up: set[str]) -> tuple[str, ...]:
    """This project's and upstream's variables that are set but that no setting read with this
    configuration: a typo, a PostgreSQL setting while COS_DB_HOST is unset, POD_IP outside kubernetes
    mode. Said once at start rather than silently ignored."""
    return tuple(
        f"{name} is set but not used: no setting reads it with this configuration "
        "(docs/configuration.md lists when each variable applies)"
        for name in sorted(environ)
        if (name.startswith("COS_") or name == "POD_IP")
        and name not in looked_up
        and not is_retired(name)
        and not name.startswith(ENV_PREFIX)
    )


def load_settings(
    environ: Mapping[str, str],
    *,
    require_write_side: bool = True,
    reads: dict[str, VariableRead] | None = None,
) -> Settings:
    """Parse every variable; raises ConfigError on the first invalid one.

    Commands that only read the store (`cos migrate`, `cos events`) pass require_write_side=False.
    `reads`, when given, receives how each variable was read (scripts/gen_config_docs.py).
    """
    original = environ
    environ = LookedUp(original)
    env = Env(environ, reads)
    warnings = tuple(
        f"{name} is no longer read (docs/configuration.md lists what replaced it)"
        for name in sorted(original)
        if is_retired(name)
    )
    read_side_enabled = env.boolean("COS_READ_SIDE_ENABLED", False)
    read_sides = load_read_sides(
        env,
        enabled=read_side_enabled,
        breaker=_breaker(env, "COS_READ_SIDE_BREAKER", "10s") if read_side_enabled else None,
    )
    store = _store(env)
    deployment_mode = _deployment_mode(env)
    settings = Settings(
        server=_server(env),
        store=store,
        write_side=_write_side(env, require_target=require_write_side),
        entities=EntitySettings(
            cache_capacity=env.integer("COS_ENTITY_CACHE_CAPACITY", 100_000, minimum=1),
            idle_timeout_s=env.duration("COS_ENTITY_IDLE_TIMEOUT", "30m"),
            mailbox_capacity=env.integer("COS_ENTITY_MAILBOX_CAPACITY", 1000, minimum=1),
        ),
        journal_writer=JournalWriterSettings(
            max_batch=env.integer("COS_JOURNAL_MAX_BATCH", 512, minimum=1, maximum=10_000),
            max_pending=env.integer("COS_JOURNAL_MAX_PENDING", 10_000, minimum=1),
        ),
        snapshots=_snapshots(env),
        logging=_logging(env),
        num_shards=_num_shards(env),
        deployment_mode=deployment_mode,
        read_side_enabled=read_side_enabled,
        subscription_enabled=env.boolean("COS_SUBSCRIPTION_ENABLED", False),
        warnings=(*warnings, *read_sides.warnings, *unused_cluster_variables(env)),
        subscriptions=SubscriptionSettings(
            buffer_size=env.integer("COS_SUBSCRIPTION_BUFFER_SIZE", 1000, minimum=1, maximum=1_000_000),
            max_subscriptions=env.integer("COS_SUBSCRIPTION_MAX", 10_000, minimum=1, maximum=1_000_000),
            write_timeout_s=_subscription_write_timeout(env),
        ),
        read_sides=read_sides,
        tracing=tracing_settings(environ, env.text("COS_SERVICE_NAME", "chiefofstate")),
        cluster=load_cluster_settings(
            env, deployment_mode=deployment_mode, uses_postgres=store.postgres is not None
        ),
        workers=load_worker_settings(env, uses_postgres=store.postgres is not None),
        http_limits=load_http_limits(env),
        grpc_limits=load_grpc_limits(env),
        security=load_security_settings(env),
        console=load_console_settings(env),
    )
    _refuse_unsupported(settings)
    settings = _with_workers(settings)
    settings = replace(
        settings,
        warnings=(*settings.warnings, *env.adjusted, *_set_but_unused(original, environ.names)),
    )
    if settings.subscription_enabled and settings.server.protocol == "http":
        # As upstream (docs/contract.md §14 #20): subscriptions are gRPC streams, and no gRPC server runs.
        settings = replace(
            settings,
            warnings=(
                *settings.warnings,
                "COS_SUBSCRIPTION_ENABLED has no effect with COS_SERVER_PROTOCOL=http: "
                "subscriptions are served over gRPC only (use 'both')",
            ),
        )
    return settings
