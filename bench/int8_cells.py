"""INT8 rows of ``bench/serve_bench.py --int8``: FP32 and INT8 of each zoo classifier, measured in one run.

Preparation (no timing, run niced): each zoo model is exported with seeded random weights (ONNX) as
version 1 and quantized with ``eca-serve quantize NAME:1 --out-version 2`` on calibration crops of
the bench's photographs (random weights make accuracy meaningless here; ``--max-drop 100``). With
``--int8-profile`` both versions then get their serving block from ``eca-serve profile --recommend
--write`` (a timing measurement: run it under the bench lock).

Measurement: one server serves both versions. Per model: the backend alone at batch 1 and 8
(FP32 and INT8 windows alternating, ``--int8-rounds`` rounds), then HTTP multipart JPEG uploads at
each concurrency, FP32 (``?version=1``) and INT8 (``?version=2``) cells alternating, round after
round. Every cell reports the median and min-max over rounds; INT8/FP32 ratios are the median and
min-max of the per-round ratios. The decode+HTTP bound: CPU milliseconds per served request on the
machine's cores, split into model time (from the raw batch-8 rate), decode+preprocess
(`preprocess_cost`) and the rest (HTTP, batching, the load generator).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """serve_bench's options for the INT8 run."""
    parser.add_argument("--int8", action="store_true", help="FP32 vs INT8 of --models (export + eca-serve quantize), "
                        "raw batch 1/8 and served at --concurrency, interleaved rounds; nothing else")
    parser.add_argument("--int8-rounds", type=int, default=2, help="with --int8: rounds of alternating FP32/INT8 cells")
    parser.add_argument("--int8-prepare-only", action="store_true", help="with --int8: export and quantize into --repository, measure nothing")
    parser.add_argument("--int8-profile", action="store_true", help="with --int8: write each version's serving block "
                        "(eca-serve profile --recommend --write) while preparing")


def calibration_images(folder: Path, images: dict[str, bytes], count: int = 16) -> Path:
    """``count`` JPEG crops (full frame, corners, centre, flipped) of the bench's 300-640 px photos."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.open(io.BytesIO(images[k])).convert("RGB") for k in ("astronaut", "coffee", "chelsea", "rocket")]
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        kind = i // len(photos)
        boxes = [(0, 0, w, h), (0, 0, 2 * w // 3, 2 * h // 3), (w // 3, h // 3, w, h), (w // 6, h // 6, 5 * w // 6, 5 * h // 6)]
        crop = photo.crop(boxes[kind % len(boxes)])
        if kind >= len(boxes):
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(folder / f"calib_{i:02d}.jpg", quality=90)
    return folder


def prepare(root: Path, models: list[str], images: dict[str, bytes], profile: bool) -> None:
    """Versions 1 (FP32 export) and 2 (``eca-serve quantize``) of every model, skipping what exists."""
    sys.path.insert(0, str(REPO / "bench"))
    from quantize_bench import export_zoo

    calibration = calibration_images(root.parent / (root.name + "_calibration"), images)
    for name in models:
        if not (root / name / "1" / "config.json").exists():
            export_zoo(root, name)
        if not (root / name / "2" / "config.json").exists():
            _cli("quantize", f"{name}:1", "--model-repository", str(root), "--calibration", str(calibration),
                 "--out-version", "2", "--max-drop", "100")
        if profile:
            for version in (1, 2):
                _cli("profile", f"{name}:{version}", "--recommend", "--write", "--model-repository", str(root),
                     "--batch-sizes", "1,4,8", "--instance-counts", "1,2", "--seconds", "0.7", "--rounds", "2")


def _cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "eca_serve.cli", *args], check=True, env=env)


def run(root: Path, models: list[str], images: dict[str, bytes], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every model's raw and served cells, FP32 and INT8 interleaved; returns the rows printed by `print_rows`."""
    from loadgen import multipart_request, run_load
    from serve_bench import preprocess_cost
    from tests.reliability.serverproc import start_server

    env = {"ECA_SERVE_DEVICE": "cpu", "ECA_SERVE_MODELS": json.dumps(models)}
    server = start_server(root, env, ready_timeout_s=600)
    small = [images[k] for k in ("astronaut", "coffee", "chelsea", "rocket")]
    rows: list[dict[str, Any]] = []
    try:
        for name in models:
            rows += _raw_rows(root, name, args)
            costs = preprocess_cost(root, name, images)
            pre_ms = statistics.mean(costs[k] for k in ("astronaut", "coffee", "chelsea", "rocket"))
            print(f"decode+preprocess for {name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in costs.items()), flush=True)
            cpu_ms = _preprocess_cpu_ms(root, name, small)
            rows.append({"model": name, "cell": "decode+preprocess ms", "fp32": [pre_ms], "int8": [pre_ms], "cpu_ms": cpu_ms})
            rate = 0.0
            for c in (int(v) for v in args.concurrency.split(",")):
                cell: dict[str, Any] = {"model": name, "cell": f"served c={c}", "fp32": [], "int8": [],
                                        "server_cpu_ms": {"fp32": [], "int8": []}}
                for _ in range(args.int8_rounds):
                    for precision, version in (("fp32", 1), ("int8", 2)):
                        url = f"{server.base}/v1/models/{name}/classify?version={version}&top_k=1"
                        # a full queue before measuring (1.5 turnovers), capped: a slow phase must not eat the lock
                        warmup = min(max(args.warmup, 1.5 * c / rate), 3 * args.warmup) if rate else args.warmup
                        load = run_load(url, [multipart_request(url, b) for b in small], c, args.seconds, warmup)
                        result, cpu_s = asyncio.run(_with_server_cpu(load, server.pid, warmup, args.seconds))
                        cell["server_cpu_ms"][precision].append(1e3 * cpu_s / max(1, len(result.latencies)))
                        if set(result.statuses) != {200}:
                            raise RuntimeError(f"{name} v{version} at c={c}: statuses {result.statuses} {result.errors}")
                        cell[precision].append(result.rate)
                        rate = min(rate, result.rate) if rate else result.rate
                rows.append(cell)
                print(_line(cell), flush=True)
    finally:
        server.stop(timeout_s=60)
    return rows


async def _with_server_cpu(load: Any, pid: int, warmup: float, seconds: float) -> tuple[Any, float]:
    """(``load``'s result, CPU seconds the server process spent in its measured window)."""
    from serve_bench import cpu_seconds

    async def window() -> float:
        await asyncio.sleep(warmup)
        start = cpu_seconds(pid)
        await asyncio.sleep(seconds)
        return cpu_seconds(pid) - start

    result, cpu_s = await asyncio.gather(load, window())
    return result, cpu_s


def _raw_rows(root: Path, name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Backend img/s at batch 1 and 8 of versions 1 and 2, built as the server builds them."""
    rows = []
    for batch in (1, 8):
        cell: dict[str, Any] = {"model": name, "cell": f"raw batch {batch}", "fp32": [], "int8": [],
                                "cpu_ms": {"fp32": [], "int8": []}}
        for _ in range(args.int8_rounds):
            for precision, version in (("fp32", 1), ("int8", 2)):
                rate, cpu_ms = _raw_rate(root, name, version, batch, max(1.0, args.seconds / 3))
                cell[precision].append(rate)
                cell["cpu_ms"][precision].append(cpu_ms)
        rows.append(cell)
        print(_line(cell), flush=True)
    return rows


_BACKENDS: dict[tuple[str, int], Callable[[int, float], tuple[float, float]]] = {}


def _raw_rate(root: Path, name: str, version: int, batch: int, seconds: float) -> tuple[float, float]:
    """(images/s, CPU-ms per image) of batches of ``batch`` on ``name:version``.

    Images/s: one caller on the backend the server builds. CPU-ms: a one-thread session, timed
    by the thread's CPU clock: on a CPU shared with other work that is what an image costs, where
    images/s also depends on how much of the CPU the run was given.
    """
    key = (name, version)
    if key not in _BACKENDS:
        _BACKENDS[key] = _backend_runner(root / name / str(version))
    return _BACKENDS[key](batch, seconds)


def _backend_runner(folder: Path) -> Callable[[int, float], tuple[float, float]]:
    import numpy as np

    from eca_serve.batching import BatchPolicy
    from eca_serve.pipelines.manager import backend_options_for, policy_for
    from eca_serve.repository import read_config
    from eca_serve.runtime import BackendOptions, create_backend, warm_up
    from serve_bench import _rate

    config = read_config(folder)
    policy: BatchPolicy = policy_for(config, "cpu", {})
    backend = create_backend(folder, config, backend_options_for(BackendOptions("onnxruntime", "cpu"), policy))
    warm_up(backend, config, batch_sizes=(1, 8))
    inputs = {b: np.random.default_rng(0).standard_normal((b, 3, *config.input.size), dtype=np.float32) for b in (1, 8)}
    single = _one_thread_session(folder / config.artifacts["onnx"].file)

    def measure(batch: int, seconds: float) -> tuple[float, float]:
        """Images/s as served, and CPU-ms per image of a one-thread session (no intra-op spinning)."""
        import time

        rate = batch * _rate(lambda: backend.infer(inputs[batch]), seconds)
        feed = {single.get_inputs()[0].name: inputs[batch]}
        cpu, n = time.thread_time(), 0
        while n < 2 or time.thread_time() - cpu < seconds / 2:
            single.run(None, feed)
            n += 1
        return rate, 1e3 * (time.thread_time() - cpu) / (n * batch)

    return measure


def _one_thread_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _preprocess_cpu_ms(root: Path, name: str, photos: list[bytes]) -> float:
    """CPU-ms of decode + preprocess per 300-640 px photo (the server's functions, this thread)."""
    import time

    from eca_serve.pipelines.images import DecodeLimits, decode_image
    from eca_serve.pipelines.preprocess import decode_target, preprocess_classification
    from eca_serve.repository import read_config

    config = read_config(root / name / "1")
    start, n = time.thread_time(), 0
    while n < 40:
        decoded = decode_image(photos[n % len(photos)], limits=DecodeLimits(), target=decode_target(config.input))
        preprocess_classification(decoded, config.input)
        n += 1
    return 1e3 * (time.thread_time() - start) / n


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def _ratios(cell: dict[str, Any]) -> list[float]:
    return [i / f for f, i in zip(cell["fp32"], cell["int8"])]


def _line(cell: dict[str, Any]) -> str:
    ratios = _ratios(cell)
    return (f"{cell['model']:18} {cell['cell']:22} fp32 {_summary(cell['fp32']):>20}  int8 {_summary(cell['int8']):>20}  "
            f"int8/fp32 {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")


def print_rows(rows: list[dict[str, Any]], cores: int) -> None:
    """The table, then per model the CPU-ms budget of an INT8 request at c=16 against the decode+HTTP bound."""
    print(f"\n{'model':18} {'cell':22} {'FP32 img/s median (min-max)':>29} {'INT8':>22} {'INT8/FP32 per round':>24}")
    for cell in rows:
        if cell["cell"] == "decode+preprocess ms":
            continue
        ratios = _ratios(cell)
        print(f"{cell['model']:18} {cell['cell']:22} {_summary(cell['fp32']):>29} {_summary(cell['int8']):>22} "
              f"{statistics.median(ratios):>11.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    for model in dict.fromkeys(r["model"] for r in rows):
        by_cell = {r["cell"]: r for r in rows if r["model"] == model}
        served, raw8 = by_cell.get("served c=16"), by_cell.get("raw batch 8")
        if not served or not raw8 or "server_cpu_ms" not in served:
            continue
        pre = by_cell["decode+preprocess ms"]["cpu_ms"]
        for precision in ("fp32", "int8"):
            spent = statistics.median(served["server_cpu_ms"][precision])
            model_ms = statistics.median(raw8["cpu_ms"][precision])
            rest = max(spent - model_ms - pre, 0.0)
            print(f"{model} {precision} at c=16: the server spent {spent:.1f} CPU-ms per request: model {model_ms:.1f} "
                  f"(batch 8, one thread), decode+preprocess {pre:.1f}, HTTP/multipart/batching {rest:.1f}. On {cores} free cores: "
                  f"{cores * 1e3 / spent:.0f} req/s; with a free model (the decode+HTTP bound) {cores * 1e3 / (pre + rest):.0f} req/s")
        ratio = statistics.median(served["server_cpu_ms"]["fp32"]) / statistics.median(served["server_cpu_ms"]["int8"])
        print(f"{model}: CPU-ms per request FP32/INT8 at c=16 = {ratio:.2f}x (what INT8/FP32 throughput is on free cores)")

def main(args: argparse.Namespace, images: dict[str, bytes]) -> None:
    """serve_bench's ``--int8`` run: prepare into ``--repository`` (or a temporary folder), then measure."""
    import tempfile

    from eca_serve.pipelines.manager import available_cores

    models = [m for m in args.models.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.repository or Path(tmp) / "models"
        prepare(root, models, images, args.int8_profile)
        if args.int8_prepare_only:
            return
        rows = run(root, models, images, args)
    print_rows(rows, available_cores())
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
