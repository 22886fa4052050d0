"""`cos serve` refusing to start, as an operator sees it: one line naming the cause and the setting,
exit 2, and nothing opened or created."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chiefofstate.cli.processes import node_environment

pytestmark = pytest.mark.integration


def serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chiefofstate", "serve"],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=60,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith(("COS_", "LOG_"))}
    return node_environment(
        base,
        COS_WRITE_SIDE_HOST="127.0.0.1",
        COS_WRITE_SIDE_PORT="50051",
        COS_DB_PATH=str(tmp_path / "node.db"),
        COS_SERVER_PROTOCOL="both",
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("variable", ["COS_PORT", "COS_HTTP_PORT", "COS_MANAGEMENT_PORT"])
def test_a_port_in_use_is_one_line_naming_port_and_variable(
    env: dict[str, str], tmp_path: Path, variable: str
) -> None:
    port = int(env[variable])
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", port))
        holder.listen()
        line = one_line(serve(env))
    assert variable in line and str(port) in line and "in use" in line
    assert not (tmp_path / "node.db").exists()  # refused before the store was opened


def test_two_settings_on_one_port_are_refused(env: dict[str, str], tmp_path: Path) -> None:
    line = one_line(serve({**env, "COS_PROMETHEUS_PORT": env["COS_HTTP_PORT"]}))
    assert "COS_HTTP_PORT" in line and "COS_PROMETHEUS_PORT" in line and env["COS_HTTP_PORT"] in line
    assert not (tmp_path / "node.db").exists()


def test_an_unreadable_tls_file_is_named(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-cert.pem"
    line = one_line(
        serve({**env, "COS_TLS_CERT_FILE": str(missing), "COS_TLS_KEY_FILE": str(tmp_path / "k.pem")})
    )
    assert "COS_TLS_CERT_FILE" in line and str(missing) in line
    assert not (tmp_path / "node.db").exists()
