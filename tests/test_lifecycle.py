"""Graceful shutdown of a real server process: SIGTERM while requests are in flight and queued."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.hostile_images import jpeg_bytes
from tests.serving_utils import export_small_classifier, free_port


def start(root: Path, port: int, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "ECA_SERVE_LOG_LEVEL": "warning", "ECA_SERVE_GRPC_PORT": "0", **env}
    cmd = [sys.executable, "-m", "eca_serve.cli", "serve", "--model-repository", str(root), "--port", str(port)]
    process = subprocess.Popen(cmd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        assert process.poll() is None, process.stdout.read().decode()
        time.sleep(0.2)
    process.kill()
    raise TimeoutError("server not ready")


async def wait_inflight(client: httpx.AsyncClient, base: str, count: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = (await client.get(f"{base}/metrics")).text
        line = next(l for l in text.splitlines() if l.startswith("eca_serve_inflight_requests "))
        if float(line.split()[1]) >= count:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"fewer than {count} requests reached the server")


async def wait_ready_status(client: httpx.AsyncClient, base: str, status: int, timeout_s: float = 20) -> int:
    """Poll ``/v2/health/ready`` until it answers ``status`` (or the timeout): the last status seen."""
    deadline = time.monotonic() + timeout_s
    seen = (await client.get(f"{base}/v2/health/ready")).status_code
    while seen != status and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        seen = (await client.get(f"{base}/v2/health/ready")).status_code
    return seen


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    export_small_classifier(root)
    return root


def test_sigterm_drains_accepted_requests_refuses_new_ones_and_exits_0(repository: Path) -> None:
    port = free_port()
    process = start(repository, port, ECA_SERVE_MAX_BATCH_SIZE="1", ECA_SERVE_DECODE_THREADS="1",
                    ECA_SERVE_GRACE_PERIOD_S="30")
    base = f"http://127.0.0.1:{port}"
    big = jpeg_bytes((3000, 2000), seed=1)  # decode + resize keep each request busy for a while

    async def scenario() -> tuple[list[int], list[int], bool]:
        async with httpx.AsyncClient(timeout=60) as client:
            url = f"{base}/v1/models/shapes_small/classify"
            accepted = [asyncio.create_task(client.post(url, content=big, headers={"content-type": "image/jpeg"})) for _ in range(12)]
            await wait_inflight(client, base, 12)  # all 12 accepted: some decoding, some queued
            process.send_signal(signal.SIGTERM)
            ready = await wait_ready_status(client, base, 503)
            late = [(await client.post(url, content=big, headers={"content-type": "image/jpeg"})).status_code for _ in range(3)]
            done = await asyncio.gather(*accepted)
            return [r.status_code for r in done], late, ready == 503

    accepted, late, ready_turned = asyncio.run(scenario())
    code = process.wait(timeout=120)
    log = process.stdout.read().decode()
    assert accepted == [200] * 12
    assert late == [503] * 3 and ready_turned
    # Drained, not cut off: it left once nothing was in flight, before its grace period ran out.
    assert code == 0 and "grace period over" not in log, log[-2000:]
