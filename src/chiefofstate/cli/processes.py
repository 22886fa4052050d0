"""Starting the node and the example handlers as real processes (used by `cos demo` and the tests)."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Below Linux's ephemeral range (32768-60999): a port chosen there could be taken by any outgoing
# connection (to PostgreSQL, to a handler) between choosing it and the server binding it.
_CHOSEN_PORTS = range(20000, 32000)


def free_port(avoid: Collection[int] = ()) -> int:
    """A port that is free now and not in `avoid`, picked outside the ephemeral range; a bind can still
    race, so callers that start servers on it retry on a bind failure (see start_node)."""
    for _ in range(200):
        port = random.choice(_CHOSEN_PORTS)
        if port in avoid:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Process:
    """A child process whose output goes to a log file, stopped with SIGTERM (then SIGKILL)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine dies."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait()


def spawn(name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> Process:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(args, env=dict(env), stdout=log_file, stderr=subprocess.STDOUT)
    return Process(name, popen, log_path, dict(env))


def wait_for(predicate_name: str, process: Process, check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(
                f"{process.name} exited with {process.popen.returncode}:\n{process.log_text()}"
            )
        if callable(check) and check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{process.name} not {predicate_name} after {timeout_s}s:\n{process.log_text()}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    # A reply that is not HTTP (some other server on the port) is "not ready" too, not a crash of the wait.
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
        return False


BANK_HANDLER_MODULES = {
    "grpc": "chiefofstate_examples.bank.write_handler",
    "http": "chiefofstate_examples.bank.http_write_handler",
}


def start_bank_write_handler(
    log_dir: Path,
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    protocol: str = "grpc",
) -> Process:
    """The example bank handler speaking `protocol` (COS_WRITE_SIDE_PROTOCOL: grpc or http).

    Its port is in `ports[protocol]` and, for either protocol, `ports["write_side"]`."""
    port = port or free_port()
    env = {**os.environ, **(extra_env or {})}
    module = BANK_HANDLER_MODULES[protocol]
    process = spawn(
        "bank-write-handler" if protocol == "grpc" else f"bank-{protocol}-write-handler",
        [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port)],
        env,
        log_dir,
    )
    process.ports[protocol] = port
    process.ports["write_side"] = port
    wait_for("listening", process, lambda: "listening on" in process.log_text(), 30)
    return process


def start_bank_read_handler(
    log_dir: Path,
    port: int | None = None,
    *,
    http: bool = False,
    deliveries: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    name: str = "bank-read-handler",
) -> Process:
    """The example read handler; `deliveries` is the file it appends one JSON line per delivery to."""
    port = port or free_port()
    args = [
        sys.executable,
        "-m",
        "chiefofstate_examples.bank.read_handler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if http:
        args.append("--http")
    if deliveries is not None:
        args += ["--log", str(deliveries)]
    process = spawn(name, args, {**os.environ, **(extra_env or {})}, log_dir)
    process.ports["http" if http else "grpc"] = port
    process.ports["read_side"] = port
    wait_for("listening", process, lambda: "listening on" in process.log_text(), 30)
    return process


_NODE_PORT_VARIABLES = (
    "COS_PORT",
    "COS_MANAGEMENT_PORT",
    "COS_HTTP_PORT",
    "COS_PROMETHEUS_PORT",
    "COS_CLUSTER_PORT",
)


# Each worker of `cos serve --workers N` has its own of these, the configured port plus its index.
_PER_WORKER_PORT_VARIABLES = ("COS_PROMETHEUS_PORT", "COS_CLUSTER_PORT")


def free_ports_in_a_row(count: int, avoid: Collection[int] = ()) -> int:
    """The first of `count` consecutive ports that are free now and not in `avoid` (see free_port)."""
    if count == 1:
        return free_port(avoid)
    for _ in range(200):
        first = free_port(avoid)
        row = range(first, first + count)
        if row.stop - 1 <= _CHOSEN_PORTS.stop and all(
            port not in avoid and _bindable(port) for port in row[1:]
        ):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def node_environment(base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """`base` and `overrides`, with a distinct free port for each of the node's servers not given."""
    return workers_environment(base, 1, **overrides)


def workers_environment(base: Mapping[str, str], workers: int, **overrides: str) -> dict[str, str]:
    """As node_environment, for `cos serve --workers N`: the per-worker ports not given are the first of
    `workers` free ones in a row, one for each worker."""
    env = {**base, **overrides}
    env.setdefault("COS_ADDRESS", "127.0.0.1")
    env.setdefault("COS_HTTP_ADDRESS", "127.0.0.1")
    if env.get("COS_DB_HOST"):
        # What cluster peers on this machine dial; on SQLite a node runs alone and would report it unused.
        env.setdefault("COS_NODE_ADDRESS", "127.0.0.1")
    taken = {int(env[name]) for name in _NODE_PORT_VARIABLES if env.get(name, "").isdigit()}
    for name in _NODE_PORT_VARIABLES:
        if name not in env:
            count = workers if name in _PER_WORKER_PORT_VARIABLES else 1
            port = free_ports_in_a_row(count, avoid=taken)
            taken.update(range(port, port + count))
            env[name] = str(port)
    return env


def start_node(
    env: Mapping[str, str],
    log_dir: Path,
    name: str = "cos-node",
    wait: bool = True,
    serve_options: Sequence[str] = (),
) -> Process:
    """`cos serve` with `serve_options` (`--workers 2`: then `ready` means some worker is)."""
    process = spawn(name, [sys.executable, "-m", "chiefofstate", "serve", *serve_options], env, log_dir)
    process.ports["grpc"] = int(env["COS_PORT"])
    process.ports["management"] = int(env["COS_MANAGEMENT_PORT"])
    process.ports["metrics"] = int(env.get("COS_PROMETHEUS_PORT", "9102"))
    if "COS_HTTP_PORT" in env:
        process.ports["http"] = int(env["COS_HTTP_PORT"])
    if "COS_CLUSTER_PORT" in env:
        process.ports["cluster"] = int(env["COS_CLUSTER_PORT"])
    if wait:
        ready_url = f"http://127.0.0.1:{process.ports['management']}/ready"
        wait_for("ready", process, lambda: http_ok(ready_url), 60)
    return process


_BIND_FAILURES = ("already in use", "cannot bind", "failed to bind")  # compared in lower case


def start_node_on_free_ports(
    base: Mapping[str, str], log_dir: Path, name: str = "cos-node", wait: bool = True, **overrides: str
) -> Process:
    """`start_node` on ports chosen here; when a chosen port was taken between choosing and binding,
    try again on new ones (ports fixed by `overrides` are kept, and such a clash is raised)."""
    for attempt in range(3):
        env = node_environment(base, **overrides)
        try:
            return start_node(
                env, log_dir, name=name if attempt == 0 else f"{name}-retry{attempt}", wait=wait
            )
        except RuntimeError as error:
            if attempt == 2 or not any(marker in str(error).lower() for marker in _BIND_FAILURES):
                raise
    raise AssertionError("unreachable")
