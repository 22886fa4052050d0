"""COS_WORKERS and a worker's ports (docs/cluster.md, "Workers")."""

from __future__ import annotations

import os

import pytest

from chiefofstate.config.settings import Settings, load_settings
from chiefofstate.core.errors import ConfigError

BASE = {"COS_WRITE_SIDE_HOST": "handler", "COS_WRITE_SIDE_PORT": "50051"}
POSTGRES = {**BASE, "COS_DB_HOST": "db", "COS_NODE_ADDRESS": "10.0.0.5"}


def load(base: dict[str, str] = POSTGRES, **overrides: str) -> Settings:
    return load_settings({**base, **overrides})


def rejects(variable: str, base: dict[str, str] = POSTGRES, **overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(base, **overrides)
    assert caught.value.variable == variable
    return str(caught.value)


def test_one_node_by_default_not_a_worker_and_no_port_shared() -> None:
    for base in (BASE, POSTGRES):
        settings = load(base)
        assert settings.workers.count == 1 and not settings.workers.is_worker
        assert not settings.server.reuse_port


def test_a_whole_number_or_auto_for_one_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(COS_WORKERS="3").workers.count == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert load(COS_WORKERS="auto").workers.count == 6
    assert load(COS_WORKERS=" AUTO ").workers.count == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one
    assert load(COS_WORKERS="auto").workers.count == 1


@pytest.mark.parametrize("value", ["0", "-1", "1025", "two", "1.5"])
def test_anything_else_is_refused(value: str) -> None:
    rejects("COS_WORKERS", COS_WORKERS=value)


def test_on_sqlite_only_one_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(BASE, COS_WORKERS="1").workers.count == 1
    message = rejects("COS_WORKERS", BASE, COS_WORKERS="2")
    assert "PostgreSQL" in message and "\n" not in message
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    rejects("COS_WORKERS", BASE, COS_WORKERS="auto")
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert load(BASE, COS_WORKERS="auto").workers.count == 1
    rejects("COS_WORKER_INDEX", BASE, COS_WORKER_INDEX="0")


def test_a_worker_shares_the_client_ports_and_offsets_its_own() -> None:
    settings = load(
        COS_WORKER_INDEX="3",
        COS_PORT="9000",
        COS_HTTP_PORT="9001",
        COS_MANAGEMENT_PORT="8558",
        COS_PROMETHEUS_PORT="9102",
        COS_CLUSTER_PORT="25520",
    )
    server, cluster = settings.server, settings.cluster
    assert settings.workers.index == 3 and server.reuse_port
    assert (server.port, server.http_port, server.management_port) == (9000, 9001, 8558)
    assert server.prometheus_port == 9105
    assert cluster.port == cluster.advertised_port == 25523
    assert cluster.advertised_address == "10.0.0.5:25523"


def test_an_advertised_cluster_port_is_offset_too() -> None:
    cluster = load(COS_WORKER_INDEX="2", COS_CLUSTER_ADVERTISED_PORT="31000").cluster
    assert (cluster.port, cluster.advertised_port) == (25522, 31002)


def test_the_supervisor_refuses_ports_its_workers_could_not_use() -> None:
    rejects("COS_CLUSTER_PORT", COS_WORKERS="4", COS_CLUSTER_PORT="65534")
    rejects("COS_PROMETHEUS_PORT", COS_WORKERS="2", COS_PROMETHEUS_PORT="65535")
    rejects("COS_PORT", COS_WORKERS="2", COS_PORT="0")
    rejects("COS_HTTP_PORT", COS_WORKERS="2", COS_SERVER_PROTOCOL="both", COS_HTTP_PORT="0")
    assert load(COS_WORKERS="2", COS_HTTP_PORT="0").workers.count == 2  # no HTTP API: not shared
    rejects("COS_CLUSTER_PORT", COS_WORKER_INDEX="10", COS_CLUSTER_PORT="65530")
    rejects("COS_WORKER_INDEX", COS_WORKER_INDEX="-1")
