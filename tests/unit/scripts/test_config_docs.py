"""docs/configuration.md is what the settings code reads (scripts/gen_config_docs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.gen_config_docs import DESCRIBED, discover

ROOT = Path(__file__).resolve().parents[3]


def test_the_configuration_reference_matches_the_settings_code() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_config_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_probes_reach_the_branches_behind_switches() -> None:
    reads, looked_up = discover()
    # behind COS_DB_HOST, COS_DEPLOYMENT_MODE=kubernetes, the breakers and read sides being enabled
    for name in (
        "COS_DB_POOL_MAX_SIZE",
        "POD_IP",
        "COS_NODE_ADDRESS",
        "COS_WRITE_SIDE_BREAKER_RESET_TIMEOUT",
        "COS_READ_SIDE_BREAKER_CALL_TIMEOUT",
        "COS_READ_SIDE_BATCH_SIZE",
    ):
        assert name in reads, name
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in looked_up  # read off the mapping, not through Env
    assert reads["COS_PORT"].default == "9000" and reads["COS_PORT"].kind == "port"
    assert set(DESCRIBED) >= set(reads)
