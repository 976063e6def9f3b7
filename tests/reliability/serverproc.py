"""``eca-serve serve`` as a subprocess, and its memory; shared by tests/reliability and bench/reliability_report.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.serving_utils import free_port


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux ``/proc/<pid>/status`` VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def serve_command(repository: Path, port: int) -> list[str]:
    """The ``eca-serve serve`` console script of this environment (``python -m eca_serve.cli`` without it)."""
    script = Path(sys.executable).with_name("eca-serve")
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "eca_serve.cli"]
    return [*entry, "serve", "--model-repository", str(repository), "--host", "127.0.0.1", "--port", str(port)]


@dataclass
class ServerProcess:
    """A running server process; its output goes to ``log`` (a pipe could fill up and block it)."""

    process: subprocess.Popen
    base: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def output(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:]

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (graceful drain), SIGKILL if it does not exit within ``timeout_s``; the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def start_server(repository: Path, env: dict[str, str] | None = None, ready_timeout_s: float = 180.0,
                 log: Path | None = None) -> ServerProcess:
    """Start ``eca-serve serve`` on a free loopback port and wait until every model is ready.

    Raises:
        RuntimeError: The process exited, or was not ready within ``ready_timeout_s`` (it is killed then).
    """
    port = free_port()
    log = log or Path(tempfile.mkstemp(prefix="eca-serve-", suffix=".log")[1])
    # gRPC off unless asked for: parallel test servers would all want port 8001
    environment = {**os.environ, "ECA_SERVE_LOG_LEVEL": "warning", "ECA_SERVE_GRPC_PORT": "0", **(env or {})}
    with open(log, "wb") as sink:
        process = subprocess.Popen(serve_command(repository, port), env=environment, stdout=sink, stderr=subprocess.STDOUT)
    return wait_ready(ServerProcess(process, f"http://127.0.0.1:{port}", log), ready_timeout_s)


def wait_ready(server: ServerProcess, ready_timeout_s: float) -> ServerProcess:
    """``server`` once /healthz answers 200.

    Raises:
        RuntimeError: The process exited, or was not ready within ``ready_timeout_s`` (it is killed then).
    """
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"eca-serve exited with {server.process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.base}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop(timeout_s=5)
    raise RuntimeError(f"eca-serve not ready after {ready_timeout_s} s:\n{server.output()}")

