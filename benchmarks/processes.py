"""Starting, watching and stopping the benchmark's processes; CPU accounting from /proc."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Workload
from chiefofstate.cli.processes import (
    Process,
    free_port,
    http_ok,
    node_environment,
    spawn,
    start_node,
    wait_for,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def machine_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds, total CPU seconds) of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # steal included, guest counted in user already
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


# How a server says that the port chosen for it was taken between choosing and binding.
BIND_FAILURES = ("Address already in use", "cannot bind", "Failed to bind")
START_ATTEMPTS = 3


@dataclass
class Fleet:
    """Every process of one benchmark run; `stop_all` (also on errors and Ctrl-C) ends each by its id."""

    log_dir: Path
    env: Mapping[str, str]

    def __post_init__(self) -> None:
        self._running: list[Process] = []
        self.generators = GeneratorPool(self.log_dir, self.env)

    def stop(self, process: Process) -> None:
        process.stop(timeout_s=20)
        if process in self._running:
            self._running.remove(process)

    def adopt(self, process: Process) -> None:
        """A process started elsewhere, stopped with the others by `stop_all`."""
        self._running.append(process)

    def stop_all(self) -> None:
        self.generators.close()
        while self._running:
            self._running.pop().stop(timeout_s=20)

    def _start(
        self,
        name: str,
        launch: Callable[[str], Process],
        ready: Callable[[Process], None],
    ) -> Process:
        """Start a server; ports are chosen free but can be taken before the server binds them, so a
        bind failure is retried on new ports (each `launch` call chooses its own)."""
        for attempt in range(START_ATTEMPTS):
            process = launch(name if attempt == 0 else f"{name}-retry{attempt}")
            self._running.append(process)
            try:
                ready(process)
            except RuntimeError as error:  # the process exited
                self.stop(process)
                if attempt == START_ATTEMPTS - 1 or not any(marker in str(error) for marker in BIND_FAILURES):
                    raise
                continue
            except BaseException:
                self.stop(process)
                raise
            return process
        raise AssertionError("unreachable")

    def _start_listening(self, name: str, args: Callable[[int], list[str]]) -> Process:
        def launch(label: str) -> Process:
            port = free_port()
            process = spawn(label, args(port), self.env, self.log_dir)
            process.ports["grpc"] = port
            return process

        def listening(process: Process) -> None:
            wait_for("listening", process, lambda: "listening on" in process.log_text(), 30)

        return self._start(name, launch, listening)

    def start_handler(self, name: str = "handler") -> Process:
        return self._start_listening(
            name, lambda port: [sys.executable, "-m", "benchmarks.handlers", "--port", str(port)]
        )

    def start_floor(self, mode: str, handler: Process | None = None, loop: str = "uvloop") -> Process:
        def args(port: int) -> list[str]:
            command = [sys.executable, "-m", "benchmarks.floor", "--mode", mode, "--port", str(port)]
            command += ["--loop", loop]
            if handler is not None:
                command += ["--handler", f"127.0.0.1:{handler.ports['grpc']}"]
            return command

        return self._start_listening(mode, args)

    def start_node(
        self, store_env: Mapping[str, str], handler: Process, name: str = "node", variant: str = ""
    ) -> Process:
        """`cos serve` as users run it; with a `variant`, the same with an experiment applied
        (benchmarks/variants.py)."""
        overrides = {
            "COS_WRITE_SIDE_HOST": "127.0.0.1",
            "COS_WRITE_SIDE_PORT": str(handler.ports["grpc"]),
            "LOG_LEVEL": "warn",
            "LOG_STYLE": "simple",
            **store_env,
        }

        def launch(label: str) -> Process:
            env = node_environment(self.env, **overrides)  # new ports on every attempt
            if not variant:
                return start_node(env, self.log_dir, name=label, wait=False)
            args = [sys.executable, "-m", "benchmarks.variants", variant]
            process = spawn(label, args, env, self.log_dir)
            process.ports["grpc"] = int(env["COS_PORT"])
            process.ports["management"] = int(env["COS_MANAGEMENT_PORT"])
            process.ports["metrics"] = int(env.get("COS_PROMETHEUS_PORT", "9102"))
            return process

        def ready(process: Process) -> None:
            url = f"http://127.0.0.1:{process.ports['management']}/ready"
            wait_for("ready", process, lambda: http_ok(url), 60)

        return self._start(name, launch, ready)


class GeneratorError(RuntimeError):
    pass


class GeneratorPool:
    """Long-lived load generator processes (benchmarks/loadgen.py), started on first use."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self._log_dir = log_dir
        self._env = dict(env)
        self._popens: list[subprocess.Popen[str]] = []

    def _ensure(self, count: int) -> list[subprocess.Popen[str]]:
        while len(self._popens) < count:
            log_path = self._log_dir / f"loadgen-{len(self._popens)}.log"
            with log_path.open("a") as log_file:
                self._popens.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "benchmarks.loadgen"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log_file,
                        env=self._env,
                        text=True,
                    )
                )
        return self._popens[:count]

    def _logs(self) -> str:
        return "\n".join(path.read_text()[-2000:] for path in sorted(self._log_dir.glob("loadgen-*.log")))

    def _send(self, popen: subprocess.Popen[str], message: dict[str, Any]) -> None:
        assert popen.stdin is not None
        try:
            popen.stdin.write(json.dumps(message) + "\n")
            popen.stdin.flush()
        except BrokenPipeError as error:
            raise GeneratorError(f"load generator exited:\n{self._logs()}") from error

    def _receive(self, popen: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
        assert popen.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([popen.stdout], [], [], 0.2)
            if ready:
                line = popen.stdout.readline()
                if not line:
                    break
                answer: dict[str, Any] = json.loads(line)
                return answer
            if popen.poll() is not None:
                break
        raise GeneratorError(f"load generator did not answer (exit code {popen.poll()}):\n{self._logs()}")

    def run(
        self,
        workloads: Sequence[Workload],
        on_start: Callable[[float, list[int]], None] | None = None,
        ready_timeout_s: float = 120.0,
    ) -> list[dict[str, Any]]:
        """Prepare one generator per workload, release them together, return their results.

        `on_start(t0, generator_pids)`, if given, runs right after the release (the orchestrator samples
        CPU there while the generators work).
        """
        popens = self._ensure(len(workloads))
        for popen, workload in zip(popens, workloads, strict=True):
            self._send(popen, {"cmd": "prepare", "workload": workload.as_dict()})
        deadline = time.monotonic() + ready_timeout_s
        for popen in popens:
            self._receive(popen, deadline)
        started_at = time.monotonic() + 0.02
        for popen in popens:
            self._send(popen, {"cmd": "go", "t0": started_at})
        if on_start is not None:
            on_start(started_at, [popen.pid for popen in popens])
        longest = max(w.warmup_s + w.window_s * w.windows for w in workloads)
        deadline = started_at + longest + 60
        return [self._receive(popen, deadline) for popen in popens]

    def close(self) -> None:
        for popen in self._popens:
            if popen.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    popen.stdin.close()  # end of input: the generator closes its channels and exits
        for popen in self._popens:
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            if popen.stdout is not None:
                popen.stdout.close()
        self._popens.clear()
