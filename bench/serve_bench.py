"""Serving benchmark: in-process limits vs HTTP throughput and latency at several concurrencies.

Run: ``python bench/serve_bench.py [--seconds 8] [--device cpu] [--models eca_resnet50,eca_mobilenet_v2]``;
``python bench/serve_bench.py --footprint`` alone (under a minute) measures the shipped models' footprint: process
start to ready, server RSS after warm-up and after 2,000 mixed requests, attention-PNG latency.

It exports the requested zoo classifiers (seeded random weights) plus the shipped default models into a
temporary repository and starts ``eca-serve serve`` as a separate process. Then, per model and while the
server idles: (1) the backend alone on pre-decoded tensors, built as the server builds it (img/s for one
caller at batch 1/4/8 on CPU, 1/8/32/64 on CUDA, and for the policy's instances side by side), (2) decode +
preprocess per photo; then (3) HTTP from this one asyncio process, multipart JPEG uploads of real photographs
(scikit-image's samples, plus one upscaled to 12 megapixels) at concurrency 1, 4, 16 and 64, each cell
measured for ``--seconds`` after a warm-up of the same load (``--warmup`` seconds, longer for long queues).
It prints one table; "served/raw" is HTTP images/s divided by the backend's best images/s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import int8_cells  # noqa: E402
from loadgen import LoadResult, multipart_request, run_load  # noqa: E402

from tests.reliability.serverproc import ServerProcess, serve_command, start_server  # noqa: E402
from tests.serving_utils import free_port  # noqa: E402


def photos() -> dict[str, bytes]:
    """JPEG bytes of scikit-image's photographs (300-640 px) and a 12-megapixel upscale."""
    from skimage import data

    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        out[name] = _jpeg(Image.fromarray(getattr(data, name)()))
    out["coffee_12mp"] = _jpeg(Image.fromarray(data.coffee()).resize((4000, 3000), Image.Resampling.BICUBIC))
    return out


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def build_repository(root: Path, models: list[str]) -> list[str]:
    """Export zoo classifiers with seeded weights; copy the shipped defaults. Returns the served names."""
    import torch

    from eca_serve import create_model
    from eca_serve.export import ExportOptions, export_model

    served = []
    for name in models:
        torch.manual_seed(0)
        export_model(create_model(name), root / name / "1", ExportOptions(name=name, formats=("onnx", "torchscript")))
        served.append(name)
    for entry in sorted((REPO / "models").glob("*/1/config.json")):
        shutil.copytree(entry.parent.parent, root / entry.parent.parent.name)
        served.append(entry.parent.parent.name)
    return served


def raw_backend(root: Path, name: str, device: str, seconds: float, batch_sizes: tuple[int, ...] = (1, 4, 8)) -> dict[str, float]:
    """Backend images/s on pre-decoded tensors, with the backend built exactly as the server builds it.

    Keys: ``batch N`` for one caller running batches of N back to back (classifiers; detectors run
    batch 1), and ``N instances`` for the policy's N callers each running batches of 1 at the same
    time, the way the server's batcher instances run under load. The served/raw ratio compares
    against the best of these.
    """
    from eca_serve.batching import BatchPolicy
    from eca_serve.repository import read_config
    from eca_serve.pipelines.manager import backend_options_for
    from eca_serve.runtime import BackendOptions, create_backend, warm_up

    config = read_config(root / name / "1")
    policy = BatchPolicy.for_device(device)
    backend = create_backend(root / name / "1", config, backend_options_for(BackendOptions("onnxruntime", device), policy))
    warm_up(backend, config)
    sizes = batch_sizes if config.task == "classification" else (1,)
    rates = {f"batch {n}": n * _rate(_caller(backend, config, n), seconds / 2) for n in sizes}
    if policy.instances > 1:
        one = _caller(backend, config, 1)
        with ThreadPoolExecutor(policy.instances) as pool:
            runs = list(pool.map(lambda _: _rate(one, seconds / 2), range(policy.instances)))
        rates[f"{policy.instances} instances"] = sum(runs)
    return rates


def _caller(backend: Any, config: Any, batch: int) -> Callable[[], object]:
    """A call of ``backend`` on a fixed input of ``batch`` images (classifiers) or one image (detectors)."""
    rng = np.random.default_rng(0)
    if config.task == "classification":
        x = rng.standard_normal((batch, 3, *config.input.size), dtype=np.float32)
        return lambda: backend.infer(x)
    side = config.detection["min_size"]
    images = [rng.random((3, side, side), dtype=np.float32)]
    return lambda: backend.infer(images)


def _rate(call: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``call`` run back to back for ``seconds``."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        count += 1
    return count / (time.perf_counter() - start)


def preprocess_cost(root: Path, name: str, images: dict[str, bytes]) -> dict[str, float]:
    """Milliseconds of decode + preprocess per photo with the model's pipeline functions."""
    from eca_serve.repository import read_config
    from eca_serve.pipelines.images import DecodeLimits, decode_image
    from eca_serve.pipelines.preprocess import decode_target, preprocess_classification

    config = read_config(root / name / "1")
    costs = {}
    for key, data in images.items():
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 0.5 or n < 3:
            decoded = decode_image(data, limits=DecodeLimits(), target=decode_target(config.input))
            preprocess_classification(decoded, config.input)
            n += 1
        costs[key] = 1e3 * (time.perf_counter() - start) / n
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each HTTP cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each HTTP cell's measured window")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="eca_resnet50,eca_mobilenet_v2", help="zoo classifiers to export (comma list)")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--batch-sizes", help="raw backend batch sizes (default: 1,4,8 on cpu, 1,8,32,64 on cuda)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--repository", type=Path, help="export into (or reuse) this folder instead of a temporary one")
    parser.add_argument("--only", help="measure only these served names (comma list)")
    parser.add_argument("--endpoints", help="only these endpoints (comma list of classify,attention,detect)")
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the server's environment (repeatable)")
    parser.add_argument("--footprint", action="store_true", help="only the shipped models' footprint: RSS, start to ready, PNG latency")
    parser.add_argument("--requests", type=int, default=2000, help="mixed requests of --footprint between the two RSS readings")
    int8_cells.add_arguments(parser)
    args = parser.parse_args()
    images = photos()
    if args.int8:
        int8_cells.main(args, images)
        return
    if args.footprint:
        print_footprint(footprint(images, args.requests))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.repository or Path(tmp)
        if args.repository and any(root.glob("*/1/config.json")):
            served = sorted(p.parent.parent.name for p in root.glob("*/1/config.json"))
        else:
            served = build_repository(root, [m for m in args.models.split(",") if m])
        if args.only:
            served = [name for name in served if name in args.only.split(",")]
        default_sizes = "1,4,8" if args.device == "cpu" else "1,8,32,64"
        sizes = tuple(int(v) for v in (args.batch_sizes or default_sizes).split(","))
        rows = run_models(root, served, images, sizes, args)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def run_models(root: Path, served: list[str], images: dict[str, bytes], sizes: tuple[int, ...], args: argparse.Namespace) -> list[dict]:
    """Per model: its raw limit (measured while the server idles, so both see the machine in the same state),
    then its HTTP cells."""
    env = {"ECA_SERVE_DEVICE": args.device, "ECA_SERVE_MODELS": json.dumps(served), **dict(e.split("=", 1) for e in args.server_env)}
    server = start_server(root, env, ready_timeout_s=600)
    rows = []
    try:
        for name in served:
            raw = raw_backend(root, name, args.device, args.seconds, sizes)
            print(f"raw backend {name}: " + ", ".join(f"{k}: {r:.1f} img/s" for k, r in raw.items()), flush=True)
            if name in args.models.split(","):
                costs = preprocess_cost(root, name, images)
                print(f"decode+preprocess for {name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in costs.items()), flush=True)
            rows += run_http(server.base, root, name, max(raw.values()), images, args)
    finally:
        server.stop(timeout_s=60)
    return rows


def run_http(base: str, root: Path, name: str, raw: float, images: dict[str, bytes], args: argparse.Namespace) -> list[dict]:
    """One model's cells: each endpoint at each concurrency on the small photos, then its first endpoint on 12 MP."""
    from eca_serve.repository import read_config

    small = [images[k] for k in ("astronaut", "coffee", "chelsea", "rocket")]
    task = read_config(root / name / "1").task
    endpoints = ["classify", "attention"] if task == "classification" else ["detect", "attention"]
    endpoints = [e for e in endpoints if not args.endpoints or e in args.endpoints.split(",")]
    rows, rate = [], 0.0
    # Endpoints alternate at each concurrency: the VM's speed drifts over tens of seconds, so cells
    # compared with each other are measured back to back. The warm-up covers 1.5 turnovers of the
    # queue at the last measured rate, so that a long queue (64 clients of a slow model) is full.
    for c in (int(v) for v in args.concurrency.split(",")):
        warmup = max(args.warmup, 1.5 * c / rate) if rate else args.warmup
        for endpoint in endpoints:
            url = f"{base}/v1/models/{name}/{endpoint}"
            result = asyncio.run(run_load(url, [multipart_request(url, b) for b in small], c, args.seconds, warmup))
            rows.append(_row(name, endpoint, c, "300-640px", result, raw))
            rate = result.rate or rate
    url = f"{base}/v1/models/{name}/{endpoints[0]}"
    result = asyncio.run(run_load(url, [multipart_request(url, images["coffee_12mp"])], 4, args.seconds, args.warmup))
    rows.append(_row(name, endpoints[0], 4, "12MP", result, raw))
    return rows


def _row(name: str, endpoint: str, c: int, photos_kind: str, result: LoadResult, raw: float) -> dict:
    lat_ms = sorted(1e3 * v for v in result.latencies)
    rate = result.rate
    p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))] if lat_ms else float("nan")
    return {"model": name, "endpoint": endpoint, "concurrency": c, "photos": photos_kind, "req_per_s": round(rate, 1),
            "p50_ms": round(statistics.median(lat_ms), 1) if lat_ms else None, "p99_ms": round(p99, 1),
            "raw_img_per_s": round(raw, 1), "served_over_raw": round(rate / raw, 2), "statuses": result.statuses,
            "client_cpu_ms_per_req": round(1e3 * result.client_cpu_s / max(1, len(result.latencies)), 2),
            "transport_errors": result.errors}


def print_table(rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: (r["model"], r["photos"] != "300-640px", r["endpoint"] == "attention", r["concurrency"]))
    header = f"{'model':22} {'endpoint':9} {'c':>3} {'photos':9} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99/p50':>7} {'served/raw':>10} {'client ms':>9}  statuses"
    print(header)
    for r in rows:
        ratio = r["p99_ms"] / r["p50_ms"] if r["p50_ms"] else float("nan")
        print(f"{r['model']:22} {r['endpoint']:9} {r['concurrency']:>3} {r['photos']:9} {r['req_per_s']:>7} {r['p50_ms']:>8} "
              f"{r['p99_ms']:>8} {ratio:>7.2f} {r['served_over_raw']:>10} {r['client_cpu_ms_per_req']:>9}  {r['statuses']}"
              + (f" errors {r['transport_errors']}" if r["transport_errors"] else ""))


def footprint(images: dict[str, bytes], requests: int, png_requests: int = 20) -> dict[str, float]:
    """The shipped models served on CPU: seconds from process start to ready, RSS (MiB) after a warm-up
    of every endpoint and after ``requests`` mixed requests (4 clients), and p50 ms of the attention PNG."""
    server, ready_s = start_timed(REPO / "models", {"ECA_SERVE_DEVICE": "cpu"})
    ready_cpu_s = cpu_seconds(server.pid)
    try:
        calls = mixed_calls(server.base, images)
        asyncio.run(send(calls, 2 * len(calls), concurrency=1))
        warm_mib = server.rss() / 2**20
        statuses = asyncio.run(send(calls, requests, concurrency=4))
        after_mib = server.rss() / 2**20
        png = _latencies(f"{server.base}/v1/models/shapes_classifier/attention?format=png", images["chelsea"], png_requests)
        as_json = _latencies(f"{server.base}/v1/models/shapes_classifier/attention", images["chelsea"], png_requests)
    finally:
        server.stop(timeout_s=60)
    return {"ready_s": ready_s, "ready_cpu_s": ready_cpu_s, "rss_warm_mib": warm_mib, "rss_after_mib": after_mib, "requests": requests,
            "statuses": statuses, "png_p50_ms": statistics.median(png), "json_p50_ms": statistics.median(as_json)}


def start_timed(repository: Path, env: dict[str, str], timeout_s: float = 120.0) -> tuple[ServerProcess, float]:
    """``eca-serve serve`` started now; (the server, seconds until /healthz answered 200), polled every 20 ms."""
    import os
    import subprocess

    import httpx

    log, port = Path(tempfile.mkstemp(prefix="eca-serve-", suffix=".log")[1]), free_port()
    start = time.perf_counter()
    with open(log, "wb") as sink:
        process = subprocess.Popen(serve_command(repository, port), env={**os.environ, "ECA_SERVE_LOG_LEVEL": "warning", **env},
                                   stdout=sink, stderr=subprocess.STDOUT)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    while time.perf_counter() - start < timeout_s and server.alive():
        try:
            if httpx.get(f"{server.base}/healthz", timeout=2).status_code == 200:
                return server, time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    server.stop(timeout_s=5)
    raise RuntimeError(f"eca-serve not ready:\n{server.output()}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used: start-up cost independent of other load."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mixed_calls(base: str, images: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """(URL, JPEG/PNG) of one round of the mix: 6 classify, 1 attention JSON, 1 attention PNG, 2 detect (RLE, polygons)."""
    v1, scene = f"{base}/v1/models", (REPO / "examples" / "scene.png").read_bytes()
    photos_ = [images[k] for k in ("astronaut", "coffee", "chelsea", "rocket")]
    calls = [(f"{v1}/shapes_classifier/classify", photos_[i % 4]) for i in range(6)]
    calls += [(f"{v1}/shapes_classifier/attention", photos_[0]), (f"{v1}/shapes_classifier/attention?format=png", photos_[1])]
    return calls + [(f"{v1}/shapes_detector/detect?masks=rle", scene), (f"{v1}/shapes_detector/detect?masks=polygon", scene)]


async def send(calls: list[tuple[str, bytes]], count: int, concurrency: int) -> dict[int, int]:
    """``count`` requests cycling through ``calls`` from ``concurrency`` clients; HTTP status -> count."""
    import httpx

    statuses: dict[int, int] = {}
    queue = iter(range(count))

    async def client(http: httpx.AsyncClient) -> None:
        for i in queue:
            url, body = calls[i % len(calls)]
            status = (await http.post(url, files={"file": ("image", body, "application/octet-stream")})).status_code
            statuses[status] = statuses.get(status, 0) + 1

    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*[client(http) for _ in range(concurrency)])
    return statuses


def _latencies(url: str, body: bytes, n: int) -> list[float]:
    """Milliseconds of ``n`` sequential uploads of ``body`` to ``url`` (each must answer 200)."""
    import httpx

    out = []
    with httpx.Client(timeout=60) as http:
        for _ in range(n):
            start = time.perf_counter()
            response = http.post(url, files={"file": ("image", body, "application/octet-stream")})
            out.append(1e3 * (time.perf_counter() - start))
            response.raise_for_status()
    return out


def print_footprint(f: dict) -> None:
    print(f"shipped models (shapes_classifier + shapes_detector), CPU, ONNX Runtime:\n"
          f"  process start -> ready     {f['ready_s']:6.2f} s   ({f['ready_cpu_s']:.2f} s of CPU)\n"
          f"  RSS after warm-up          {f['rss_warm_mib']:6.0f} MiB\n"
          f"  RSS after {f['requests']} requests   {f['rss_after_mib']:6.0f} MiB   statuses {f['statuses']}\n"
          f"  attention PNG p50          {f['png_p50_ms']:6.1f} ms   (attention JSON p50 {f['json_p50_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
