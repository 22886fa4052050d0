"""Nodes and a write handler as real processes that a fault test can kill, pause and bring back.

`Cluster` starts `cos serve` nodes on one store, each on its own free ports (its gRPC, management,
HTTP and metrics ports, and its peer port `COS_CLUSTER_PORT` with `COS_NODE_ADDRESS=127.0.0.1`, which
nodes without cluster mode ignore). On PostgreSQL a node can get its own `Proxy` in front of the
database (its `COS_DB_HOST`/`COS_DB_PORT` are then the proxy's), so that one node's link can be cut
while the others keep theirs, and its own `Proxy` in front of its peer port (advertised to the other
members as `COS_CLUSTER_ADVERTISED_PORT`), so that every call other members make to it can be cut,
held or slowed. A node is restarted with exactly the environment it first had: the same
ports, the same store.

`BankHandler` is the example bank write handler, restartable on the port the nodes were given.

Both only start and signal processes; what a test does meanwhile (load, checks) is up to the test.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chiefofstate.cli.processes import (
    Process,
    free_port,
    http_ok,
    start_bank_write_handler,
    start_node,
    start_node_on_free_ports,
)
from tests.support.proxy import Proxy

# Start-up on a busy two-core machine can take many seconds; these are ceilings, not waits.
READY_TIMEOUT_S = 90.0
_RESTART_ATTEMPTS = 5
_BIND_FAILURES = ("already in use", "cannot bind", "failed to bind", "cannot listen")


def _bind_failure(error: BaseException) -> bool:
    return any(marker in str(error).lower() for marker in _BIND_FAILURES)


def node_base_env(handler_port: int, environ: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """A node's environment without its store: `environ` less any COS_/LOG_ variable of the caller's,
    pointed at the gRPC bank handler on `handler_port`."""
    env = {key: value for key, value in environ.items() if not key.startswith(("COS_", "LOG_"))}
    env.update(
        COS_WRITE_SIDE_PROTOCOL="grpc",
        COS_WRITE_SIDE_HOST="127.0.0.1",
        COS_WRITE_SIDE_PORT=str(handler_port),
        LOG_LEVEL="INFO",
        LOG_STYLE="JSON",
    )
    env.update(overrides)
    return env


def postgres_store_env(host: str, port: int, user: str, password: str, database: str) -> dict[str, str]:
    """The COS_DB_* variables of a PostgreSQL store (docs/contract.md §10.2)."""
    return {
        "COS_DB_HOST": host,
        "COS_DB_PORT": str(port),
        "COS_DB_USER": user,
        "COS_DB_PASSWORD": password,
        "COS_DB_NAME": database,
    }


@dataclass
class Node:
    """One node: its environment (kept across restarts) and its current process, if any."""

    name: str
    env: dict[str, str]
    log_dir: Path
    process: Process | None = None
    proxy: Proxy | None = None
    peer_proxy: Proxy | None = None
    starts: int = 0
    paused: bool = False

    @property
    def grpc_port(self) -> int:
        return int(self.env["COS_PORT"])

    @property
    def management_port(self) -> int:
        return int(self.env["COS_MANAGEMENT_PORT"])

    @property
    def cluster_port(self) -> int:
        return int(self.env["COS_CLUSTER_PORT"])

    @property
    def target(self) -> str:
        """The node's gRPC address for clients."""
        return f"127.0.0.1:{self.grpc_port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def ready(self) -> bool:
        return self.alive() and http_ok(f"http://127.0.0.1:{self.management_port}/ready")

    def start(self, wait: bool = True) -> None:
        """Start the node on its ports; a port taken meanwhile (or not yet released) is waited for."""
        if self.alive():
            raise RuntimeError(f"{self.name} is already running")
        for attempt in range(_RESTART_ATTEMPTS):
            self.starts += 1
            try:
                self.process = start_node(
                    self.env, self.log_dir, name=f"{self.name}.{self.starts}", wait=wait
                )
                self.paused = False
                return
            except RuntimeError as error:
                if attempt == _RESTART_ATTEMPTS - 1 or not _bind_failure(error):
                    raise
                time.sleep(0.5)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if not self.alive():
                log = self.process.log_text() if self.process is not None else ""
                raise RuntimeError(f"{self.name} is not running:\n{log[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout_s}s")
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9: no shutdown code runs, as when the machine dies."""
        if self.process is not None:
            self.process.kill()
        self.paused = False

    def terminate(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait for the exit (SIGKILL after `timeout_s`); the exit code."""
        if self.process is None:
            return None
        if self.paused:
            self.resume()  # a stopped process cannot act on SIGTERM
        return self.process.stop(timeout_s)

    def sigterm(self) -> None:
        """SIGTERM without waiting: the graceful leave begins (see `terminate` for the exit)."""
        if self.paused:
            self.resume()  # a stopped process cannot act on SIGTERM
        self._signal(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets and leases but does nothing, as in a long GC pause."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def restart(self, wait: bool = True) -> None:
        """kill -9 if running, then start again on the same ports and store."""
        self.kill()
        self.start(wait=wait)

    def metric(self, name: str) -> float | None:
        """The value of one unlabelled sample on the node's /metrics (`name` as exposed, a counter
        with its `_total`), or None when the node does not expose it."""
        url = f"http://127.0.0.1:{self.env['COS_PROMETHEUS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    def log_text(self) -> str:
        """Every incarnation's log, oldest first."""
        logs = sorted(self.log_dir.glob(f"{self.name}.*.log"), key=lambda p: p.stat().st_mtime)
        return "".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in logs)

    def _signal(self, number: signal.Signals) -> None:
        if self.process is None or not self.process.alive():
            raise RuntimeError(f"{self.name} is not running")
        self.process.popen.send_signal(number)


@dataclass
class Cluster:
    """Nodes on one store. `store_env` holds the COS_DB_* variables of the real store; with
    `proxied=True` (PostgreSQL only) each node reaches it through a proxy of its own."""

    base_env: dict[str, str]
    store_env: dict[str, str]
    log_dir: Path
    proxied: bool = False
    nodes: list[Node] = field(default_factory=list)

    def add_node(
        self, *, proxied: bool | None = None, peer_proxied: bool = False, wait: bool = True, **overrides: str
    ) -> Node:
        name = f"node{len(self.nodes)}"
        store = dict(self.store_env)
        proxy = peer_proxy = None
        if self.proxied if proxied is None else proxied:
            if "COS_DB_HOST" not in store:
                raise ValueError("only a PostgreSQL store can be proxied")
            proxy = Proxy(store["COS_DB_HOST"], int(store["COS_DB_PORT"]), name=f"{name}-db").start()
            store.update(COS_DB_HOST="127.0.0.1", COS_DB_PORT=str(proxy.port))
        taken = {n.cluster_port for n in self.nodes} | {p.port for p in self.proxies()}
        if proxy is not None:
            taken.add(proxy.port)
        cluster_port = free_port(avoid=taken)
        cluster_overrides = {"COS_CLUSTER_PORT": str(cluster_port), "COS_NODE_ADDRESS": "127.0.0.1"}
        if peer_proxied:
            peer_proxy = Proxy("127.0.0.1", cluster_port, name=f"{name}-peers").start()
            cluster_overrides["COS_CLUSTER_ADVERTISED_PORT"] = str(peer_proxy.port)
        try:
            process = start_node_on_free_ports(
                {**self.base_env, **store},
                self.log_dir,
                name=f"{name}.1",
                wait=wait,
                **{**cluster_overrides, **overrides},
            )
        except BaseException:
            for opened in (proxy, peer_proxy):
                if opened is not None:
                    opened.close()
            raise
        node = Node(name, dict(process.env), self.log_dir, process=process, starts=1)
        node.proxy, node.peer_proxy = proxy, peer_proxy
        self.nodes.append(node)
        return node

    @property
    def targets(self) -> list[str]:
        return [node.target for node in self.nodes]

    def proxies(self) -> list[Proxy]:
        return [proxy for node in self.nodes for proxy in (node.proxy, node.peer_proxy) if proxy is not None]

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        for proxy in self.proxies():
            proxy.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class BankHandler:
    """The example bank write handler (gRPC), killed and restarted on the same port."""

    def __init__(self, log_dir: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.extra_env = dict(extra_env or {})
        self.port = 0
        self.starts = 0
        self.process: Process | None = None

    def start(self) -> BankHandler:
        if self.port == 0:
            for attempt in range(3):
                try:
                    self._spawn(free_port())
                    return self
                except RuntimeError as error:
                    if attempt == 2 or not _bind_failure(error):
                        raise
        for attempt in range(_RESTART_ATTEMPTS):
            try:
                self._spawn(self.port)
                return self
            except RuntimeError as error:
                if attempt == _RESTART_ATTEMPTS - 1 or not _bind_failure(error):
                    raise
                time.sleep(0.5)
        return self

    def _spawn(self, port: int) -> None:
        self.starts += 1
        process = start_bank_write_handler(
            self.log_dir / f"handler.{self.starts}", port=port, extra_env=self.extra_env
        )
        self.process, self.port = process, port

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def pause(self) -> None:
        """SIGSTOP: the handler keeps its socket open (connections are accepted by the kernel) but
        answers nothing, as a hung process does."""
        if self.process is not None:
            self.process.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.popen.send_signal(signal.SIGCONT)

    def __enter__(self) -> BankHandler:
        return self.start() if self.process is None else self

    def __exit__(self, *_: object) -> None:
        self.kill()


@contextlib.contextmanager
def running_cluster(
    base_env: dict[str, str],
    store_env: dict[str, str],
    log_dir: Path,
    *,
    nodes: int = 1,
    proxied: bool = False,
) -> Iterator[Cluster]:
    """A cluster with `nodes` nodes started and ready; every node and proxy is gone afterwards."""
    cluster = Cluster(base_env, store_env, log_dir, proxied=proxied)
    try:
        for _ in range(nodes):
            cluster.add_node()
        yield cluster
    finally:
        cluster.close()
