"""Generate docs/configuration.md from the settings code.

The variables, their defaults and accepted values come from running `load_settings` itself: every typed
read (`config/parsing.Env`) is noted, and the script explores the branches by setting each boolean, each
choice and each empty-by-default text it discovers, until no new variable shows up. Only what a reader
needs beyond that (what a variable means, how upstream differs, where it applies) is written here, in
DESCRIBED. `--check` exits 1 when the document differs from what the code produces, or when a variable the
code reads has no description (a test runs it), so the reference cannot drift from the code.

Run `python scripts/gen_config_docs.py` after adding or changing a setting.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from chiefofstate.config.parsing import LookedUp, VariableRead
from chiefofstate.config.settings import RETIRED_PREFIXES, RETIRED_VARIABLES, is_retired, load_settings
from chiefofstate.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs/configuration.md"
CONFIG_CODE = ROOT / "src/chiefofstate/config"

SECTIONS = [
    "Servers and ports",
    "Store",
    "Snapshots",
    "Write handler",
    "Entities and the journal writer",
    "Read sides",
    "Subscriptions",
    "Cluster and deployment",
    "Security",
    "Logging and telemetry",
]
P = "*project*"  # upstream does not read it


@dataclass(frozen=True)
class Described:
    section: str
    meaning: str
    upstream: str = "same"
    default: str | None = None  # shown instead of the value the code reads, when that needs words


# name → what the code cannot say. Upstream column: "same", *project* (upstream has no such variable),
# or how upstream's behaviour differs.
DESCRIBED: dict[str, Described] = {
    # Servers and ports
    "COS_SERVER_PROTOCOL": Described("Servers and ports", "which client APIs are served"),
    "COS_ADDRESS": Described(
        "Servers and ports",
        "bind address of the gRPC and cluster ports, and of management and metrics unless their own is set",
    ),
    "COS_MANAGEMENT_ADDRESS": Described(
        "Servers and ports", "bind address of `/alive` and `/ready`", P, default="COS_ADDRESS"
    ),
    "COS_PROMETHEUS_ADDRESS": Described(
        "Servers and ports", "bind address of the Prometheus metrics", P, default="COS_ADDRESS"
    ),
    "COS_HTTP_MAX_CONNECTIONS": Described(
        "Servers and ports", "HTTP API connections open at once per worker; a new one beyond gets 503", P
    ),
    "COS_HTTP_MAX_HEADER_SIZE": Described(
        "Servers and ports", "bytes of one HTTP request's head; a larger one gets 431", P
    ),
    "COS_HTTP_HEADER_TIMEOUT": Described(
        "Servers and ports", "time to send a request's head from its first byte; 408 after it", P
    ),
    "COS_HTTP_BODY_TIMEOUT": Described("Servers and ports", "time to send a request's body; 400 after it", P),
    "COS_HTTP_KEEP_ALIVE_TIMEOUT": Described(
        "Servers and ports", "idle time an HTTP connection is kept, before its first request too", P
    ),
    "COS_HTTP_TLS_HANDSHAKE_TIMEOUT": Described(
        "Servers and ports", "time to finish the TLS handshake on the HTTP port; the connection is closed", P
    ),
    # gRPC connection limits (docs/operations.md): the client port and the cluster port
    "COS_GRPC_SERVER_MAX_CONCURRENT_STREAMS": Described(
        "Servers and ports", "calls one gRPC connection may run at once; more wait in the client", P
    ),
    "COS_GRPC_SERVER_MAX_CONCURRENT_RPCS": Described(
        "Servers and ports",
        "calls (subscriptions included) a gRPC port runs at once; more get RESOURCE_EXHAUSTED",
        P,
    ),
    "COS_GRPC_SERVER_MAX_HEADER_LIST_SIZE": Described(
        "Servers and ports",
        "bytes of one gRPC request's headers (HTTP/2 header list); more: RESOURCE_EXHAUSTED",
        P,
    ),
    "COS_GRPC_SERVER_HANDSHAKE_TIMEOUT": Described(
        "Servers and ports", "time from TCP accept to a finished TLS handshake and HTTP/2 preface", P
    ),
    "COS_GRPC_SERVER_MAX_CONNECTION_IDLE": Described(
        "Servers and ports", "a gRPC connection without a call for this long is closed; `0`: never", P
    ),
    "COS_GRPC_SERVER_MAX_CONNECTION_AGE": Described(
        "Servers and ports", "a gRPC connection this old is asked to reconnect (GOAWAY); `0`: never", P
    ),
    "COS_GRPC_SERVER_MAX_CONNECTION_AGE_GRACE": Described(
        "Servers and ports", "calls still running at the age get this long before the connection closes", P
    ),
    "COS_GRPC_SERVER_KEEPALIVE_TIME": Described(
        "Servers and ports", "the server pings a gRPC connection that was quiet this long", P
    ),
    "COS_GRPC_SERVER_KEEPALIVE_TIMEOUT": Described(
        "Servers and ports", "an unanswered server ping closes the connection after this long", P
    ),
    "COS_GRPC_SERVER_MIN_PING_INTERVAL": Described(
        "Servers and ports", "clients' pings closer together than this are strikes", P
    ),
    "COS_GRPC_SERVER_MAX_PING_STRIKES": Described(
        "Servers and ports", "strikes after which a connection is closed (GOAWAY `too_many_pings`)", P
    ),
    "COS_PORT": Described("Servers and ports", "gRPC port of `ChiefOfStateService`"),
    "COS_HTTP_ADDRESS": Described("Servers and ports", "bind address of the HTTP/JSON API"),
    "COS_HTTP_PORT": Described("Servers and ports", "HTTP/JSON API port"),
    "COS_MANAGEMENT_PORT": Described(
        "Servers and ports", "`/alive` and `/ready`", "upstream's port is fixed at 8558"
    ),
    "COS_CONSOLE_ENABLED": Described(
        "Servers and ports", "serve the admin console at `/admin/` on the management port", P
    ),
    "COS_CONSOLE_DESCRIPTORS": Described(
        "Servers and ports",
        "FileDescriptorSet the console decodes events and states with "
        "(default: the write handler's reflection)",
        P,
    ),
    "COS_CONSOLE_SAMPLE_INTERVAL": Described(
        "Servers and ports", "how often the console's overview reads the node's metrics", P
    ),
    "COS_PROMETHEUS_PORT": Described("Servers and ports", "Prometheus metrics at `GET /metrics`", P),
    "COS_COMMAND_HANDLER_TIMEOUT": Described(
        "Servers and ports", "whole seconds a command may take in total (docs/contract.md §3.11)"
    ),
    "COS_MAX_MESSAGE_SIZE": Described(
        "Servers and ports", "largest gRPC message in bytes, in and out; also bounds HTTP bodies", P
    ),
    "COS_SHUTDOWN_TIMEOUT": Described("Servers and ports", "grace period for calls in flight on SIGTERM", P),
    "COS_HEALTH_CHECK_INTERVAL": Described(
        "Servers and ports", "how often the gRPC health status and read-side lag gauges are refreshed", P
    ),
    "COS_EVENT_LOOP": Described("Servers and ports", "`asyncio` for the standard library's event loop", P),
    "COS_NUM_SHARDS": Described(
        "Servers and ports",
        "entity shards; a power of two, never changed for a journal (docs/contract.md §4.4)",
        "any positive number accepted",
    ),
    # Store
    "COS_DB_HOST": Described(
        "Store",
        "set: PostgreSQL, and the node is a cluster member; unset: the embedded SQLite file",
        "default `localhost`: upstream always uses PostgreSQL",
        default="unset",
    ),
    "COS_DB_PATH": Described("Store", "the SQLite file, when `COS_DB_HOST` is unset", P),
    "COS_DB_PORT": Described("Store", "PostgreSQL only"),
    "COS_DB_NAME": Described("Store", "PostgreSQL only"),
    "COS_DB_USER": Described("Store", "PostgreSQL only"),
    "COS_DB_PASSWORD": Described("Store", "PostgreSQL only; in Kubernetes, from a Secret"),
    "COS_DB_SCHEMA": Described("Store", "PostgreSQL only: schema of every table, created if missing"),
    "COS_DB_POOL_MAX_SIZE": Described(
        "Store",
        "PostgreSQL only: connections in the journal's pool (read sides have their own)",
        "any positive number accepted",
    ),
    "COS_DB_POOL_MIN_IDLE_CONNECTIONS": Described(
        "Store",
        "PostgreSQL only: connections kept open; above the maximum it is clamped to it (a warning says so)",
    ),
    "COS_DB_POOL_IDLE_TIMEOUT_MS": Described(
        "Store", "PostgreSQL only: an idle connection above the minimum is closed after this"
    ),
    "COS_DB_POOL_MAX_LIFETIME_MS": Described("Store", "PostgreSQL only: a connection is replaced after this"),
    "COS_DB_CONNECT_TIMEOUT": Described("Store", "PostgreSQL only: connection timeout", P),
    "COS_DB_STARTUP_RETRIES": Described(
        "Store", "PostgreSQL only: attempts at start before exiting with code 1", P
    ),
    "COS_MIGRATIONS_INITIAL_VERSION": Described(
        "Store",
        "integer (surrounding whitespace trimmed); recorded as the schema version while "
        "`cos_migrations` is empty "
        "(docs/contract.md §4.6)",
        "same checks and messages; any failure exits 2 with one line here",
        default="unset",
    ),
    # Snapshots
    "COS_DISABLE_SNAPSHOT": Described("Snapshots", "no snapshots, nothing deleted"),
    "COS_SNAPSHOT_FREQUENCY": Described("Snapshots", "events between snapshots, when they are on"),
    "COS_NUM_SNAPSHOTS_TO_RETAIN": Described("Snapshots", "snapshots kept per entity, when they are on"),
    "COS_JOURNAL_LOGICAL_DELETION": Described(
        "Snapshots", "delete events older than the retained snapshots (docs/contract.md §4.5)"
    ),
    # Write handler
    "COS_WRITE_SIDE_PROTOCOL": Described(
        "Write handler", "`grpc` or `http`; `both` is refused at start", "accepts `both`, then never starts"
    ),
    "COS_WRITE_SIDE_HOST": Described(
        "Write handler", "the write handler's host; required by `cos serve`", default="required"
    ),
    "COS_WRITE_SIDE_PORT": Described(
        "Write handler", "1 to 65535; required by `cos serve`", "default -1", default="required"
    ),
    "COS_WRITE_SIDE_USE_TLS": Described("Write handler", "TLS (gRPC) or `https` (HTTP) toward the handler"),
    "COS_WRITE_SIDE_PROTO_VALIDATION": Described(
        "Write handler", "check event and state types against the two lists below"
    ),
    "COS_WRITE_SIDE_EVENT_PROTOS": Described("Write handler", "event message names allowed"),
    "COS_WRITE_SIDE_STATE_PROTOS": Described("Write handler", "state message names allowed"),
    "COS_WRITE_SIDE_PROPAGATED_HEADERS": Described(
        "Write handler", "metadata keys forwarded to HandleCommand"
    ),
    "COS_WRITE_PERSISTED_HEADERS": Described("Write handler", "metadata keys stored in `meta.headers`"),
    "COS_LEGACY_PERSISTED_HEADERS": Described(
        "Write handler",
        'also return the persisted headers in `meta.data["persisted_headers.v1"]`, as Namely-era releases '
        "did, for clients that still read them there (docs/contract.md §2.8); stored with each new event",
        P,
    ),
    "COS_GRPC_CALLS_TIMEOUT": Described("Write handler", "milliseconds; bound of every write-handler call"),
    "COS_GRPC_CLIENT_POOL_SIZE": Described(
        "Write handler",
        "gRPC channels to the write handler, used round-robin; above 64 it is capped at 64 "
        "(a warning says so)",
        "no upper limit",
    ),
    "COS_GRPC_KEEPALIVE_ENABLED": Described(
        "Write handler", "HTTP/2 keepalive on outbound channels (write and read handlers)"
    ),
    "COS_GRPC_KEEPALIVE_TIME": Described(
        "Write handler",
        "whole seconds are used; not read while keepalive is off",
        "same",
    ),
    "COS_GRPC_KEEPALIVE_TIMEOUT": Described(
        "Write handler",
        "whole seconds are used; not read while keepalive is off",
        "same",
    ),
    "COS_GRPC_KEEPALIVE_WITHOUT_CALLS": Described(
        "Write handler", "ping even with no call in progress; not read while keepalive is off"
    ),
    "COS_WRITE_SIDE_BREAKER_ENABLED": Described("Write handler", "a circuit breaker in front of the handler"),
    "COS_WRITE_SIDE_BREAKER_MAX_FAILURES": Described("Write handler", "when the breaker is on"),
    "COS_WRITE_SIDE_BREAKER_CALL_TIMEOUT": Described("Write handler", "when the breaker is on; at most 5m"),
    "COS_WRITE_SIDE_BREAKER_RESET_TIMEOUT": Described("Write handler", "when the breaker is on; 1s to 1h"),
    # Entities and the journal writer
    "COS_ENTITY_CACHE_CAPACITY": Described(
        "Entities and the journal writer", "entities kept in memory, least recently used evicted first", P
    ),
    "COS_ENTITY_IDLE_TIMEOUT": Described(
        "Entities and the journal writer", "an entity idle this long leaves memory; `0` = never", P
    ),
    "COS_ENTITY_MAILBOX_CAPACITY": Described(
        "Entities and the journal writer", "requests that may wait for one entity", P
    ),
    "COS_JOURNAL_MAX_BATCH": Described(
        "Entities and the journal writer", "appends per group-commit transaction", P
    ),
    "COS_JOURNAL_MAX_PENDING": Described(
        "Entities and the journal writer", "appends waiting for the writer; beyond, RESOURCE_EXHAUSTED", P
    ),
    # Read sides
    "COS_READ_SIDE_ENABLED": Described("Read sides", "run read sides and serve ReadSideManagerService"),
    "COS_READ_SIDE_CONFIG": Described(
        "Read sides",
        "YAML file or folder of read-side definitions; empty: the `COS_READ_SIDE_CONFIG__*` variables",
    ),
    "COS_READ_SIDE_CONFIG__<SETTING>__<ID>": Described(
        "Read sides", "one setting of read side `<ID>` (docs/contract.md §5.1)", default="—"
    ),
    "COS_READ_SIDE_BREAKER_ENABLED": Described("Read sides", "one circuit breaker per read side"),
    "COS_READ_SIDE_BREAKER_MAX_FAILURES": Described("Read sides", "when the breaker is on"),
    "COS_READ_SIDE_BREAKER_CALL_TIMEOUT": Described(
        "Read sides", "when the breaker is on; at most 5m; also bounds each call"
    ),
    "COS_READ_SIDE_BREAKER_RESET_TIMEOUT": Described("Read sides", "when the breaker is on; 1s to 1h"),
    "COS_READ_SIDE_REPLAY_DELAY": Described("Read sides", "pause between REPLAY_* attempts", P),
    "COS_READ_SIDE_BATCH_SIZE": Described("Read sides", "journal rows per read", P),
    "COS_READ_SIDE_POLL_INTERVAL": Described(
        "Read sides", "safety-net poll; commits wake projections at once", P
    ),
    "COS_READ_SIDE_MAX_CONCURRENCY": Described("Read sides", "handler calls and journal reads in flight", P),
    "COS_READ_SIDE_COMMIT_INTERVAL": Described("Read sides", "how often changed offsets are stored", P),
    "COS_READ_SIDE_COMMIT_BATCH": Described("Read sides", "events after which an offset is stored sooner", P),
    "COS_READ_SIDE_RESTART_MIN_BACKOFF": Described(
        "Read sides", "first restart delay after a database error", P
    ),
    "COS_READ_SIDE_RESTART_MAX_BACKOFF": Described("Read sides", "longest restart delay", P),
    # Subscriptions
    "COS_SUBSCRIPTION_ENABLED": Described("Subscriptions", "serve live subscriptions (gRPC only)"),
    "COS_SUBSCRIPTION_BUFFER_SIZE": Described("Subscriptions", "events waiting for one subscriber", P),
    "COS_SUBSCRIPTION_MAX": Described("Subscriptions", "open subscription streams per node", P),
    "COS_SUBSCRIPTION_WRITE_TIMEOUT": Described(
        "Subscriptions", "a subscriber whose stream accepts no write for this long is ended", P
    ),
    # Security (docs/operations.md, "Security")
    "COS_TLS_CERT_FILE": Described(
        "Security", "PEM certificate chain: TLS on the gRPC, HTTP and cluster ports", P
    ),
    "COS_TLS_KEY_FILE": Described("Security", "PEM private key of `COS_TLS_CERT_FILE`", P),
    "COS_TLS_CLIENT_CA_FILE": Described(
        "Security", "mutual TLS: clients and peers must present a certificate this CA signed", P
    ),
    "COS_TLS_RELOAD_INTERVAL": Described(
        "Security",
        "how often the certificate, client CA and tokens files are checked for a change (reloaded without a "
        "restart)",
        P,
    ),
    "COS_AUTH_TOKENS_FILE": Described(
        "Security",
        "bearer tokens, `token role` per line (`client` or `admin`), reloaded when changed; unset: no "
        "authentication",
        P,
    ),
    "COS_GRPC_REFLECTION_ENABLED": Described("Security", "serve gRPC server reflection", P),
    # Cluster and deployment
    "COS_DEPLOYMENT_MODE": Described(
        "Cluster and deployment",
        "`kubernetes`: peers dial `POD_IP`; `docker`: `COS_NODE_ADDRESS`",
        "picks the discovery method",
    ),
    "POD_IP": Described(
        "Cluster and deployment", "cluster only, kubernetes mode: the address peers dial", default="required"
    ),
    "COS_NODE_ADDRESS": Described(
        "Cluster and deployment", "cluster only, docker mode: the address peers dial", P, default="host name"
    ),
    "COS_REPLICA_COUNT": Described(
        "Cluster and deployment",
        "cluster only: members expected; a member alone takes no shard while more are",
    ),
    "COS_KUBERNETES_APP_LABEL": Described(
        "Cluster and deployment",
        "read and reported unused: members find each other in the database",
        "selects the pods to discover",
    ),
    "COS_CLUSTER_PORT": Described(
        "Cluster and deployment",
        "cluster only: internal gRPC port peers forward requests to",
        "upstream's cluster remoting port",
    ),
    "COS_CLUSTER_ADVERTISED_PORT": Described(
        "Cluster and deployment",
        "cluster only: the port peers dial, behind a proxy or NAT",
        P,
        default="COS_CLUSTER_PORT",
    ),
    "COS_CLUSTER_HEARTBEAT_INTERVAL": Described(
        "Cluster and deployment", "cluster only: heartbeat period", P
    ),
    "COS_CLUSTER_MEMBER_TTL": Described("Cluster and deployment", "cluster only: a silent member's life", P),
    "COS_CLUSTER_LEASE_TTL": Described("Cluster and deployment", "cluster only: shard lease length", P),
    "COS_CLUSTER_LEASE_RENEW_INTERVAL": Described(
        "Cluster and deployment", "cluster only: lease renewal period", P
    ),
    "COS_CLUSTER_LEASE_MARGIN": Described(
        "Cluster and deployment", "cluster only: stop serving a shard this long before its lease ends", P
    ),
    "COS_CLUSTER_UNOWNED_WAIT": Described(
        "Cluster and deployment", "cluster only: wait for an owner of an unowned shard", P
    ),
    "COS_CLUSTER_FORWARD_STREAM_MAX_IN_FLIGHT": Described(
        "Cluster and deployment",
        "cluster only: forwarded requests at once on the stream to one peer (more go as calls of "
        "their own); `0`: every forwarded request is a call of its own",
        P,
    ),
    "COS_WORKERS": Described(
        "Cluster and deployment",
        "node processes `cos serve` runs (PostgreSQL only); `auto`: one per core",
        P,
        default="1",
    ),
    "COS_WORKER_INDEX": Described(
        "Cluster and deployment", "internal: set by the supervisor for each worker", P, default="unset"
    ),
    # Logging and telemetry
    "LOG_LEVEL": Described(
        "Logging and telemetry",
        "start-up lines are logged at WARN so that they show by default",
        "same levels; `OFF` silences every line here too (configuration errors still print)",
    ),
    "LOG_STYLE": Described("Logging and telemetry", "log line format"),
    "COS_SERVICE_NAME": Described(
        "Logging and telemetry", "`service` of JSON logs; the default `OTEL_SERVICE_NAME`; 1 to 64 characters"
    ),
    "OTEL_EXPORTER_OTLP_ENDPOINT": Described(
        "Logging and telemetry",
        "OTLP/gRPC collector; tracing is on only when this or the next is set",
        default="unset",
    ),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": Described(
        "Logging and telemetry", "OTLP/gRPC collector for traces", default="unset"
    ),
    "OTEL_SERVICE_NAME": Described(
        "Logging and telemetry", "service name on spans", default="COS_SERVICE_NAME"
    ),
    "OTEL_SDK_DISABLED": Described(
        "Logging and telemetry", "`true` switches tracing and OTLP metrics off", default="unset"
    ),
    "OTEL_METRICS_EXPORTER": Described(
        "Logging and telemetry",
        "`otlp` (in a comma-separated list) also pushes metrics over OTLP, beside `/metrics` "
        '(docs/operations.md, "Metrics over OTLP"); endpoint, headers and `OTEL_METRIC_EXPORT_INTERVAL` '
        "(60 s) are the SDK's standard variables",
        "the agent pushes metrics over OTLP by default",
        default="unset",
    ),
    "OTEL_METRIC_EXPORT_INTERVAL": Described(
        "Logging and telemetry",
        "milliseconds between pushes of metrics over OTLP (100 to 3600000)",
        default="60000",
    ),
    "OTEL_METRIC_EXPORT_TIMEOUT": Described(
        "Logging and telemetry", "milliseconds one push of metrics over OTLP may take", default="30000"
    ),
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": Described(
        "Logging and telemetry",
        "`grpc` or `http/protobuf` for the metrics exporter; falls back to `OTEL_EXPORTER_OTLP_PROTOCOL`",
        default="grpc",
    ),
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": Described(
        "Logging and telemetry",
        "`grpc` or `http/protobuf` for the span exporter; falls back to `OTEL_EXPORTER_OTLP_PROTOCOL`",
        default="grpc",
    ),
    "OTEL_EXPORTER_OTLP_PROTOCOL": Described(
        "Logging and telemetry",
        "`grpc` or `http/protobuf` for the span and metric exporters (each also has its own "
        "`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `_METRICS_PROTOCOL`)",
        default="grpc",
    ),
    "OTEL_JAVAAGENT_ENABLED": Described(
        "Logging and telemetry", "upstream's switch: `false` switches tracing off", default="unset"
    ),
}
PATTERNS = {"COS_READ_SIDE_CONFIG__": "COS_READ_SIDE_CONFIG__<SETTING>__<ID>"}
# What the settings read to start, with any value: the handler's address (a required setting).
BASE = {"COS_WRITE_SIDE_HOST": "handler", "COS_WRITE_SIDE_PORT": "50051"}
_NAME = re.compile(r"""["'](COS_[A-Z0-9_]+|POD_IP|LOG_[A-Z]+|OTEL_[A-Z_]+)["']""")


def _probe(overrides: dict[str, str]) -> tuple[dict[str, VariableRead], set[str]]:
    reads: dict[str, VariableRead] = {}
    environ = LookedUp({**BASE, **overrides})
    with contextlib.suppress(ConfigError):  # what was read before a refusal still counts
        load_settings(environ, reads=reads)
    return reads, environ.names


def _variants(read: VariableRead) -> list[str]:
    if read.kind == "boolean" and read.default == "false":
        return ["true"]
    if read.kind == "choice":
        return [value for value in read.accepted.split(" (")[0].split(", ") if value != read.default]
    if read.kind == "text" and read.default == "":
        return ["1"]
    return []


def discover() -> tuple[dict[str, VariableRead], set[str]]:
    """Every variable load_settings reads on some branch, with how; and the names read without Env."""
    reads, names = _probe({})
    queue = [({}, set(reads))]
    tried: set[tuple[tuple[str, str], ...]] = {()}
    while queue:
        overrides, parent_names = queue.pop()
        for read in list(reads.values()):
            for value in _variants(read):
                probe = {**overrides, read.name: value}
                key = tuple(sorted(probe.items()))
                if key in tried:
                    continue
                tried.add(key)
                found, looked_up = _probe(probe)
                names |= looked_up
                new = set(found) - set(reads)
                for name, how in found.items():
                    reads.setdefault(name, how)
                if new or set(found) - parent_names:
                    queue.append((probe, set(found)))
    return reads, names


def names_in_code(known: set[str]) -> set[str]:
    """Variable names spelled out in the settings code: a read on a branch the probes did not reach still
    shows here. Prefixes that the code completes (`COS_WRITE_SIDE_BREAKER` + `_ENABLED`) are left out."""
    names = {match for path in CONFIG_CODE.glob("*.py") for match in _NAME.findall(path.read_text())}
    return {
        name
        for name in names
        if not is_retired(name)
        and name not in RETIRED_PREFIXES
        and not any(other.startswith(name + "_") for other in known)
        or name in known
    }


def _documented_name(name: str) -> str:
    for prefix, pattern in PATTERNS.items():
        if name.startswith(prefix):
            return pattern
    return name


def render() -> str:
    reads, looked_up = discover()
    known = {*reads, *looked_up}
    found = {_documented_name(name) for name in {*known, *names_in_code(known)} if not is_retired(name)}
    undescribed = sorted(found - set(DESCRIBED))
    stale = sorted(set(DESCRIBED) - found)
    if undescribed or stale:
        problems = [f"{name}: read by the code, but has no entry in DESCRIBED" for name in undescribed]
        problems += [f"{name}: in DESCRIBED, but no setting reads it" for name in stale]
        raise SystemExit("scripts/gen_config_docs.py:\n  " + "\n  ".join(problems))
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_config_docs.py from the settings code; do not edit by hand. -->",
        "",
        "Every environment variable the node reads. Invalid values stop `cos serve` before it opens a port,",
        "with one line naming the variable and exit code 2. A `COS_*` variable (or `POD_IP`) that is set but",
        "that no setting reads with the rest of the configuration (a typo, a PostgreSQL setting on SQLite,",
        "`POD_IP` in docker mode) is named in a `warning:` line at start. Booleans accept `true`/`false`,",
        "`yes`/`no`, `on`/`off`; durations are HOCON (`500ms`, `10s`, `1m`; a bare number is milliseconds).",
        "",
        f"In the *upstream* column, *project* marks a variable upstream does not read; {P} variables are",
        "ignored by upstream, so one environment can serve both during a migration",
        "([migrating-from-upstream.md](migrating-from-upstream.md)).",
    ]
    for section in SECTIONS:
        lines += ["", f"## {section}", "", "| variable | default | accepted | meaning | upstream |"]
        lines.append("| --- | --- | --- | --- | --- |")
        for name in sorted(n for n, d in DESCRIBED.items() if d.section == section):
            described, read = DESCRIBED[name], reads.get(name)
            default = described.default if described.default is not None else (read.default if read else "")
            accepted = read.accepted if read else "any text"
            shown_default = (
                f"`{default}`" if default and default not in ("unset", "required", "—") else default
            )
            shown_default = shown_default or "empty"
            lines.append(
                f"| `{name}` | {shown_default} | {accepted} | {described.meaning} | {described.upstream} |"
            )
    lines += [
        "",
        "## Not read",
        "",
        "Variables that neither upstream nor this project reads any more get a warning of their own at",
        "start:",
        ", ".join([*(f"`{name}`" for name in RETIRED_VARIABLES), *(f"`{p}*`" for p in RETIRED_PREFIXES)])
        + ". `COS_EVENTS_BATCH_THRESHOLD` is now",
        "`COS_SNAPSHOT_FREQUENCY`; the telemetry ones gave way to the `OTEL_*` variables; the Namely-era",
        "plugin, read-side offset database and `COS_POSTGRES_*` settings were folded into the `COS_DB_*`",
        "ones. `JAVA_OPTS` is ignored. Other `OTEL_*` variables are read by the OpenTelemetry SDK itself:",
        "`OTEL_PROPAGATORS` (default `tracecontext,baggage`; also `b3`, `b3multi`, `jaeger`),",
        "`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS` and the others it documents.",
        "",
        "## Values accepted as upstream accepts them",
        "",
        "Values upstream starts with start this node too, changed only where a start-up `warning:` line",
        "says so: `LOG_LEVEL` also takes `TRACE` and `ALL` (both `DEBUG` here) and `OFF` (no log lines at",
        "all; configuration errors still print); `COS_GRPC_CLIENT_POOL_SIZE` above 64 is capped at 64;",
        "`COS_GRPC_KEEPALIVE_TIME`, `_TIMEOUT` and `_WITHOUT_CALLS` are not read while",
        "`COS_GRPC_KEEPALIVE_ENABLED` is off (so a value that would not parse does not matter);",
        "`COS_DB_POOL_MIN_IDLE_CONNECTIONS` above `COS_DB_POOL_MAX_SIZE` is clamped to it, as upstream's",
        "pool does; `COS_MIGRATIONS_INITIAL_VERSION` is trimmed of surrounding whitespace.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is stale")
    arguments = parser.parse_args()
    text = render()
    if arguments.check:
        if not DOCUMENT.exists() or DOCUMENT.read_text() != text:
            print("docs/configuration.md is stale: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
