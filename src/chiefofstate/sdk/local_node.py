"""`local_node(...)`: a `cos serve` process for an application's tests, on SQLite in a folder of its own,
in front of a handler the test serves (`chiefofstate.sdk.start`).

    running = await start(Bank(), protocol="grpc")
    with local_node(write_handler_port=running.port, data_dir=tmp_path) as node:
        async with CosClient(node.target, BankAccount) as bank:
            ...

The node gets free ports, is waited for until it reports ready, and is stopped (SIGTERM, then SIGKILL)
when the block ends, also when the test fails. Its log is `node.log` in `data_dir`.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

# Below Linux's ephemeral range (32768-60999): a port chosen there is not taken by an outgoing connection
# between choosing it and the node binding it.
_PORT_RANGE: Final = range(20000, 32000)
_PORT_VARIABLES: Final = ("COS_PORT", "COS_MANAGEMENT_PORT", "COS_PROMETHEUS_PORT", "COS_CLUSTER_PORT")


@dataclass(frozen=True)
class LocalNode:
    """A running node: `target` is its gRPC address for CosClient; `log_path` holds its output."""

    target: str
    ports: Mapping[str, int]
    log_path: Path
    process: subprocess.Popen[bytes]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free now, below the ephemeral range."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.choice(_PORT_RANGE)
        if port in chosen:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def local_node(
    *,
    write_handler_port: int,
    data_dir: str | Path,
    protocol: Literal["grpc", "http"] = "grpc",
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 60.0,
) -> Iterator[LocalNode]:
    """Run `cos serve` on SQLite (`data_dir`/cos.db) in front of the handler listening on
    127.0.0.1:`write_handler_port`.

    `env` adds or overrides COS_* variables (COS_SUBSCRIPTION_ENABLED=true, for example). Raises
    RuntimeError, with the node's log, when it exits or is not ready within `ready_timeout_s`."""
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "node.log"
    ports = dict(zip(_PORT_VARIABLES, free_ports(len(_PORT_VARIABLES)), strict=True))
    node_env = {key: value for key, value in os.environ.items() if not key.startswith("COS_")}
    node_env.update(
        COS_ADDRESS="127.0.0.1",
        COS_DB_PATH=str(folder / "cos.db"),
        COS_WRITE_SIDE_HOST="127.0.0.1",
        COS_WRITE_SIDE_PORT=str(write_handler_port),
        COS_WRITE_SIDE_PROTOCOL=protocol,
        **{name: str(port) for name, port in ports.items()},
    )
    node_env.update(env or {})
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "chiefofstate", "serve"],
            env=node_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        ready_url = f"http://127.0.0.1:{node_env['COS_MANAGEMENT_PORT']}/ready"
        deadline = time.monotonic() + ready_timeout_s
        while not _ready(ready_url):
            if process.poll() is not None or time.monotonic() > deadline:
                state = "exited" if process.poll() is not None else f"not ready after {ready_timeout_s}s"
                raise RuntimeError(f"the node {state}:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        grpc_port = int(node_env["COS_PORT"])
        yield LocalNode(f"127.0.0.1:{grpc_port}", {**ports, "COS_PORT": grpc_port}, log_path, process)
    finally:
        _stop(process)
