"""The cost of OpenTelemetry tracing per request: off, on at sampling ratio 0, on at ratio 1, interleaved.

Run: ``nice python bench/tracing_bench.py [--rounds 7] [--requests 100] [--concurrency 1] [--exporter none]``.

Three ``eca-serve serve`` processes serve the shipped classifier (ONNX Runtime, CPU, gRPC off): tracing off;
``--tracing`` with ``OTEL_TRACES_SAMPLER=traceidratio`` and ``OTEL_TRACES_SAMPLER_ARG=0``; and the same at 1.
``--exporter`` is their ``OTEL_TRACES_EXPORTER``: ``none`` (default) measures making the spans, ``console``
adds writing them (to /dev/null here). Each round sends ``--requests`` v1 classify requests (one JPEG each,
``--concurrency`` at a time) to every server in turn, the order rotated per round, so that all three see the
same drift of a shared machine. Printed per variant: median req/s with the min-max over rounds, the ratio to
tracing off, and the median extra microseconds per request over tracing off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.serving_utils import free_port  # noqa: E402

CLS = "shapes_classifier"
VARIANTS = {
    "off": {},
    "on, ratio 0": {"ECA_SERVE_TRACING": "1", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
    "on, ratio 1": {"ECA_SERVE_TRACING": "1", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"},
}


def start(env: dict[str, str], exporter: str) -> tuple[subprocess.Popen, str]:
    """An ``eca-serve serve`` process with ``env``; (process, base URL) once it is ready."""
    port = free_port()
    command = [sys.executable, "-m", "eca_serve.cli", "serve", "--model-repository", str(REPO / "models"), "--model", CLS,
               "--port", str(port), "--grpc-port", "0"]
    full = {**os.environ, "PYTHONPATH": str(REPO), "ECA_SERVE_LOG_LEVEL": "warning", "OTEL_TRACES_EXPORTER": exporter, **env}
    process = subprocess.Popen(command, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} (env {env})")
        time.sleep(0.2)
    raise TimeoutError("server did not become ready")


def burst(client: httpx.Client, base: str, photo: bytes, requests: int, concurrency: int) -> float:
    """Requests per second of ``requests`` classify calls, ``concurrency`` at a time."""

    def one(_: int) -> None:
        response = client.post(f"{base}/v1/models/{CLS}/classify", files={"file": ("cat.jpg", photo, "image/jpeg")})
        response.raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    return requests / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--exporter", choices=["none", "console"], default="none")
    args = parser.parse_args()
    photo = (REPO / "examples" / "cat.jpg").read_bytes()
    servers = {name: start(env, args.exporter) for name, env in VARIANTS.items()}
    rates: dict[str, list[float]] = {name: [] for name in servers}
    try:
        with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=args.concurrency * 3)) as client:
            for _, base in servers.values():
                burst(client, base, photo, 20, args.concurrency)  # warm-up
            names = list(servers)
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    rates[name].append(burst(client, servers[name][1], photo, args.requests, args.concurrency))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    off = statistics.median(rates["off"])
    print(f"{args.rounds} rounds x {args.requests} v1 classify requests, concurrency {args.concurrency}, exporter {args.exporter}")
    for name, values in rates.items():
        median = statistics.median(values)
        extra_us = statistics.median((1 / v - 1 / o) * 1e6 for v, o in zip(values, rates["off"]))
        print(f"{name:12s} {median:7.1f} req/s (min {min(values):.1f}, max {max(values):.1f})  x{median / off:.2f}  "
              f"{extra_us:+7.0f} us/request (median of per-round differences)")


if __name__ == "__main__":
    main()
