"""A variable set but read by no setting is said at start, not silently ignored (docs/configuration.md)."""

from __future__ import annotations

from chiefofstate.config.settings import load_settings

BASE = {"COS_WRITE_SIDE_HOST": "handler", "COS_WRITE_SIDE_PORT": "50051"}


def _unused(environ: dict[str, str]) -> list[str]:
    warnings = load_settings({**BASE, **environ}).warnings
    return [w.split(" ")[0] for w in warnings if "is set but not used" in w]


def test_a_typo_and_settings_of_a_branch_not_taken_are_named() -> None:
    # On SQLite the PostgreSQL pool and the cluster's address are not read; in docker mode, POD_IP.
    assert _unused(
        {"COS_DB_POOL_MAX_SIZE": "8", "COS_NODE_ADDRESS": "10.0.0.1", "POD_IP": "10.0.0.2", "COS_PROT": "1"}
    ) == ["COS_DB_POOL_MAX_SIZE", "COS_NODE_ADDRESS", "COS_PROT", "POD_IP"]


def test_the_same_settings_are_not_named_where_they_apply() -> None:
    environ = {"COS_DB_HOST": "db", "COS_DB_POOL_MAX_SIZE": "8", "COS_DEPLOYMENT_MODE": "kubernetes"}
    assert _unused({**environ, "POD_IP": "10.0.0.2"}) == []
    assert _unused({"COS_DB_HOST": "db", "COS_NODE_ADDRESS": "10.0.0.1"}) == []


def test_retired_variables_and_other_programs_variables_get_no_second_warning() -> None:
    warnings = load_settings(
        {**BASE, "COS_TELEMETRY_NAMESPACE": "x", "HOME": "/root", "JAVA_OPTS": "-X"}
    ).warnings
    assert warnings == (
        "COS_TELEMETRY_NAMESPACE is no longer read (docs/configuration.md lists what replaced it)",
    )
