"""Cluster and deployment settings (docs/contract.md §10.6, docs/cluster.md).

Several nodes on one PostgreSQL form one cluster: every node with `COS_DB_HOST` set is a member, even a
lone one, because a second node started later must find the first one's shards leased and fenced. The
embedded SQLite file runs alone (decision D10).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from chiefofstate.config.parsing import Env
from chiefofstate.core.errors import ConfigError
from chiefofstate.core.leases import LeaseTiming, MemberTiming

DEFAULT_CLUSTER_PORT = 25520  # the port upstream's cluster traffic uses
DEFAULT_FORWARD_STREAM_MAX_IN_FLIGHT = 256


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    enabled: bool
    host: str  # what peers dial: POD_IP in kubernetes mode, else COS_NODE_ADDRESS or the hostname
    port: int  # COS_CLUSTER_PORT: the internal gRPC service for peers, bound on COS_ADDRESS
    advertised_port: int  # what peers dial; differs from `port` only behind a proxy or NAT
    replica_count: int
    members: MemberTiming
    leases: LeaseTiming
    # How long a request for a shard nobody owns waits for an owner before UNAVAILABLE.
    unowned_wait_s: float
    # Forwarded requests at once on one stream to one peer; 0: one call per forwarded request.
    forward_stream_max_in_flight: int = DEFAULT_FORWARD_STREAM_MAX_IN_FLIGHT

    @property
    def advertised_address(self) -> str:
        return f"{self.host}:{self.advertised_port}"


CLUSTER_OFF = ClusterSettings(
    enabled=False,
    host="",
    port=DEFAULT_CLUSTER_PORT,
    advertised_port=DEFAULT_CLUSTER_PORT,
    replica_count=1,
    members=MemberTiming(),
    leases=LeaseTiming(),
    unowned_wait_s=3.0,
)


def _advertised_host(env: Env, deployment_mode: str) -> str:
    if deployment_mode == "kubernetes":
        pod_ip = env.text("POD_IP", "").strip()
        if not pod_ip:
            raise ConfigError("POD_IP", "must be set in kubernetes mode (the downward API's status.podIP)")
        return pod_ip
    return env.text("COS_NODE_ADDRESS", "").strip() or socket.gethostname()


def _member_timing(env: Env) -> MemberTiming:
    try:
        return MemberTiming(
            heartbeat_interval_s=env.duration("COS_CLUSTER_HEARTBEAT_INTERVAL", "2s"),
            ttl_s=env.duration("COS_CLUSTER_MEMBER_TTL", "10s"),
        )
    except ValueError as error:
        raise ConfigError("COS_CLUSTER_HEARTBEAT_INTERVAL", str(error)) from None


def _lease_timing(env: Env) -> LeaseTiming:
    try:
        return LeaseTiming(
            ttl_s=env.duration("COS_CLUSTER_LEASE_TTL", "10s"),
            renew_interval_s=env.duration("COS_CLUSTER_LEASE_RENEW_INTERVAL", "2s"),
            margin_s=env.duration("COS_CLUSTER_LEASE_MARGIN", "2s"),
        )
    except ValueError as error:
        raise ConfigError("COS_CLUSTER_LEASE_TTL", str(error)) from None


def unused_cluster_variables(env: Env) -> tuple[str, ...]:
    """Upstream's variables this project reads but does not need, said once at start."""
    if env.text("COS_KUBERNETES_APP_LABEL", "").strip():
        return (
            "COS_KUBERNETES_APP_LABEL is not used: members find each other through the database, "
            "not the Kubernetes API",
        )
    return ()


def load_cluster_settings(env: Env, *, deployment_mode: str, uses_postgres: bool) -> ClusterSettings:
    port = env.port("COS_CLUSTER_PORT", DEFAULT_CLUSTER_PORT)
    members, leases = _member_timing(env), _lease_timing(env)
    return ClusterSettings(
        enabled=uses_postgres,
        host=_advertised_host(env, deployment_mode) if uses_postgres else "",
        port=port,
        advertised_port=env.port("COS_CLUSTER_ADVERTISED_PORT", port) or port,
        replica_count=env.integer("COS_REPLICA_COUNT", 1, minimum=1, maximum=1000),
        members=members,
        leases=leases,
        unowned_wait_s=env.duration("COS_CLUSTER_UNOWNED_WAIT", "3s"),
        forward_stream_max_in_flight=env.integer(
            "COS_CLUSTER_FORWARD_STREAM_MAX_IN_FLIGHT",
            DEFAULT_FORWARD_STREAM_MAX_IN_FLIGHT,
            minimum=0,
            maximum=100_000,
        ),
    )
