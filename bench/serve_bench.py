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
measured for ``--seconds`` after a warm-up of the same load (``--warmup`` seconds, longer for long queues);
(4) for classifiers, gRPC cells next to them (``bench/grpc_cells.py``): the same photos as encoded JPEGs and
as pre-decoded tensors, sent by tritonclient.grpc and by a lean pre-serialized client. At each
concurrency the cells alternate, ``--rounds`` times, and the raw backend's best setting is re-measured
at the start of each round. It prints one table; "served/raw" is images/s divided by
the backend's best images/s (of the same round), "client cores" the load generator's CPU over the
window, "server ms" the server process's CPU per answered request, and "cpu ratio" the backend's CPU
per image over the CPU a request costs server and client together (the served/raw of a machine busy
with nothing else).

Engine x precision columns, raw and served in the same rounds: ``--engines`` (``bench/engine_cells.py``).

Interleaved comparison at one concurrency: ``python bench/serve_bench.py --models eca_mobilenet_v2
--only eca_mobilenet_v2 --endpoints classify --concurrency 16 --rounds 3 --seconds 4``.
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

import engine_cells  # noqa: E402
import grpc_cells  # noqa: E402
import int8_cells  # noqa: E402
from inprocess_limit import inprocess_limit  # noqa: E402
from cell_rounds import RawProbe, cell_row, interleaved, spread  # noqa: E402
from loadgen import LoadResult, multipart_request, run_load  # noqa: E402

from tests.reliability.serverproc import ServerProcess, serve_command, start_server  # noqa: E402
from tests.serving_utils import free_port  # noqa: E402


SMALL = ("astronaut", "coffee", "chelsea", "rocket")  # the 300-640 px JPEG mix of the HTTP cells


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


def raw_backend(root: Path, name: str, device: str, seconds: float, batch_sizes: tuple[int, ...] = (1, 4, 8),
                engine: str = "onnxruntime") -> dict[str, float]:
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
    backend = create_backend(root / name / "1", config, backend_options_for(BackendOptions(engine, device), policy))
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
    parser.add_argument("--engine", default="onnxruntime", choices=["onnxruntime", "openvino"],
                        help="engine of the server (ECA_SERVE_BACKEND) and of the raw backend it is compared with")
    parser.add_argument("--models", default="eca_resnet50,eca_mobilenet_v2", help="zoo classifiers to export (comma list)")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--batch-sizes", help="raw backend batch sizes (default: 1,4,8 on cpu, 1,8,32,64 on cuda)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--repository", type=Path, help="export into (or reuse) this folder instead of a temporary one")
    parser.add_argument("--only", help="measure only these served names (comma list)")
    parser.add_argument("--endpoints", help="only these endpoints (comma list of classify,attention,detect)")
    parser.add_argument("--grpc", default=",".join(grpc_cells.cell_label(c, k) for k in grpc_cells.KINDS for c in grpc_cells.CLIENTS),
                        help="gRPC cells for classifiers (comma list of grpc-{jpeg,tensor}/{tc,lean}; empty for none)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the cells at each concurrency")
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the server's environment (repeatable)")
    parser.add_argument("--inprocess-limit", action="store_true", help="also print each classifier's in-process decode+infer "
                        "limit of all instances on the same JPEG mix (bench/inprocess_limit.py), to divide served rates by")
    parser.add_argument("--footprint", action="store_true", help="only the shipped models' footprint: RSS, start to ready, PNG latency")
    parser.add_argument("--requests", type=int, default=2000, help="mixed requests of --footprint between the two RSS readings")
    int8_cells.add_arguments(parser)
    engine_cells.add_arguments(parser)
    args = parser.parse_args()
    images = photos()
    if args.int8:
        int8_cells.main(args, images)
        return
    if args.engines:
        engine_cells.main(args, images)
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
    grpc_port = free_port()
    env = {"ECA_SERVE_DEVICE": args.device, "ECA_SERVE_MODELS": json.dumps(served), "ECA_SERVE_GRPC_PORT": str(grpc_port),
           "ECA_SERVE_BACKEND": args.engine, **dict(e.split("=", 1) for e in args.server_env)}
    from eca_serve.runtime.engines import cpu_flags, cpu_model

    print(f"engine {args.engine}; CPU {cpu_model()} ({' '.join(sorted(f for f in cpu_flags() if f.startswith(('avx', 'amx', 'fma'))))})")
    server = start_server(root, env, ready_timeout_s=600)
    rows = []
    try:
        for name in served:
            raw = raw_backend(root, name, args.device, args.seconds, sizes, args.engine)
            print(f"raw backend {name}: " + ", ".join(f"{k}: {r:.1f} img/s" for k, r in raw.items()), flush=True)
            if name in args.models.split(","):
                costs = preprocess_cost(root, name, images)
                print(f"decode+preprocess for {name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in costs.items()), flush=True)
            if args.inprocess_limit and name in args.models.split(",") + ["shapes_classifier"]:
                limit = inprocess_limit(root / name / "1", [images[k] for k in SMALL], args.seconds, args.device)
                print(f"in-process decode+infer limit {name}: {limit:.1f} img/s (divide the served img/s by it)", flush=True)
            probe = RawProbe(root, name, args.device, max(raw, key=raw.get))
            rows += run_cells(server, f"127.0.0.1:{grpc_port}", root, name, probe, images, args)
    finally:
        server.stop(timeout_s=60)
    return rows


def run_cells(server: ServerProcess, grpc_address: str, root: Path, name: str, probe: RawProbe,
              images: dict[str, bytes], args: argparse.Namespace) -> list[dict]:
    """One model's cells: each HTTP endpoint and gRPC cell at each concurrency on the small photos, in
    interleaved rounds, the raw backend's best setting re-measured by ``probe`` at the start of each
    round; then its first endpoint on 12 MP."""
    from eca_serve.repository import read_config

    small = [images[k] for k in SMALL]
    task = read_config(root / name / "1").task
    endpoints = ["classify", "attention"] if task == "classification" else ["detect", "attention"]
    endpoints = [e for e in endpoints if not args.endpoints or e in args.endpoints.split(",")]
    wanted = [c for c in args.grpc.split(",") if c] if task == "classification" else []
    grpc = grpc_cells.grpc_cells(grpc_address, root, name, small, server.pid) if wanted else {}
    rows, rate = [], 0.0
    # The warm-up covers 1.5 turnovers of the queue at the last measured rate, so that a long queue
    # (64 clients of a slow model) is full.
    for c in (int(v) for v in args.concurrency.split(",")):
        warmup = max(args.warmup, 1.5 * c / rate) if rate else args.warmup
        cells = {e: _http_cell(f"{server.base}/v1/models/{name}/{e}", small, c, warmup, server.pid, args) for e in endpoints}
        cells.update({label: _bound(grpc[label], c, args.seconds, warmup) for label in wanted})
        results, raws = interleaved(cells, args.rounds, lambda: probe.rate(args.seconds / 2),
                                    report=lambda label, r: print(f"  {name} {label} c={c}: {r.rate:.1f} req/s", flush=True))
        cpu_ms = statistics.median(probe.cpu_ms[-args.rounds:])
        rows += [cell_row(name, label, c, "300-640px", runs, raws, cpu_ms) for label, runs in results.items()]
        rate = max(r.rate for runs in results.values() for r in runs) or rate
    url = f"{server.base}/v1/models/{name}/{endpoints[0]}"
    result = asyncio.run(run_load(url, [multipart_request(url, images["coffee_12mp"])], 4, args.seconds, args.warmup, server.pid))
    rows.append(cell_row(name, endpoints[0], 4, "12MP", [result], [statistics.median(raws)], cpu_ms))
    return rows


def _http_cell(url: str, photos_: list[bytes], c: int, warmup: float, pid: int, args: argparse.Namespace) -> Callable[[], LoadResult]:
    requests = [multipart_request(url, b) for b in photos_]
    return lambda: asyncio.run(run_load(url, requests, c, args.seconds, warmup, pid))


def _bound(cell: grpc_cells.Cell, c: int, seconds: float, warmup: float) -> Callable[[], LoadResult]:
    return lambda: cell(c, seconds, warmup)


def print_table(rows: list[dict]) -> None:
    order = {e: i for i, e in enumerate(dict.fromkeys(r["endpoint"] for r in rows))}
    rows = sorted(rows, key=lambda r: (r["model"], r["photos"] != "300-640px", order[r["endpoint"]], r["concurrency"]))
    print(f"{'model':18} {'endpoint':17} {'c':>3} {'photos':9} {'req/s':>7} {'spread':>11} {'p50 ms':>7} {'p99/p50':>7} "
          f"{'served/raw':>10} {'spread':>9} {'client cores':>12} {'server ms':>9} {'cpu ratio':>9}  statuses")
    for r in rows:
        ratio = r["p99_ms"] / r["p50_ms"] if r["p50_ms"] else float("nan")
        print(f"{r['model']:18} {r['endpoint']:17} {r['concurrency']:>3} {r['photos']:9} {r['req_per_s']:>7} "
              f"{spread(r['req_per_s_rounds'], 1):>11} {r['p50_ms']:>7} {ratio:>7.2f} {r['served_over_raw']:>10} "
              f"{spread(r['served_over_raw_rounds'], 2):>9} {r['client_cores']:>12} {r['server_cpu_ms_per_req']:>9} {str(r['cpu_ratio']):>9}  {r['statuses']}"
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
