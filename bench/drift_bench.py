"""What attention drift monitoring costs: per image next to inference, and served throughput on vs off.

    python bench/drift_bench.py [--rounds 8] [--window-s 1.5] [--concurrency 16]

1. Per image: the monitor's ``observe`` (run in the batch worker, after inference) against one
   inference of the same model, for the shipped classifier and detector.
2. Served: one server, the shipped classifier under multipart PNG load; the monitor is switched on
   and off between alternating windows (this VM's speed drifts in phases of seconds, so only
   interleaved windows compare; the order within a pair alternates too), and the median rates of
   both are printed with their spread, plus the cost per pair (1 - on/off of adjacent windows:
   median and range), which cancels the slow drift that the two medians still carry.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.loadgen import multipart_request, run_load  # noqa: E402
from eca_serve.pipelines.base import drift_monitor  # noqa: E402
from eca_serve.repository import read_config  # noqa: E402
from eca_serve.repository import attention_output
from eca_serve.runtime import BackendOptions, create_backend  # noqa: E402
from eca_serve.settings import Settings  # noqa: E402
from tests.serving_utils import running_server  # noqa: E402

MODELS = REPO / "models"


def per_image_cost(name: str, repeats: int = 200) -> dict[str, float]:
    """Microseconds per image of one inference (batch 1) and of ``observe`` on its attention."""
    folder = MODELS / name / "1"
    config = read_config(folder)
    backend = create_backend(folder, config, BackendOptions("onnxruntime", threads=1))
    side = config.input.size or (config.detection["min_size"],) * 2
    x = np.random.default_rng(0).random((1, 3, *side), dtype=np.float32)
    run = (lambda: backend.infer(x)) if config.task == "classification" else (lambda: backend.infer([x[0]])[0])
    outputs = run()
    per_item = [{k: v[0] for k, v in outputs.items()}] if config.task == "classification" else [outputs]
    monitor = drift_monitor(config, folder, 512)
    keys = [attention_output(a.name) for a in config.attention]

    def observe() -> None:  # what the batch worker does: ModelPipeline.attention_rows + observe_rows
        monitor.observe_rows(np.stack([np.concatenate([np.ravel(o[k]) for k in keys]) for o in per_item]))

    return {"inference_us": 1e6 * _seconds_per_call(run, 20), "observe_us": 1e6 * _seconds_per_call(observe, repeats)}


def _seconds_per_call(call, repeats: int) -> float:
    call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


async def interleaved(base: str, app, args: argparse.Namespace) -> dict[str, list[float]]:
    pipeline = app.state.manager.get("shapes_classifier")
    monitor = pipeline.drift
    body = (REPO / "examples" / "star.png").read_bytes()
    requests = [multipart_request(f"{base}/v1/models/shapes_classifier/classify", body, "star.png", "image/png")]
    rates: dict[str, list[float]] = {"on": [], "off": []}
    await run_load(base, requests, args.concurrency, 2.0)  # warm-up
    for i in range(args.rounds):
        for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
            pipeline.drift = monitor if mode == "on" else None
            result = await run_load(base, requests, args.concurrency, args.window_s, warmup_s=0.3)
            rates[mode].append(result.rate)
    pipeline.drift = monitor
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="alternating on/off window pairs")
    parser.add_argument("--window-s", type=float, default=1.5, help="seconds per measured window")
    parser.add_argument("--concurrency", type=int, default=16, help="clients of the load generator")
    args = parser.parse_args()
    print("per image (one thread)          inference us   observe us   observe/inference")
    for name in ("shapes_classifier", "shapes_detector"):
        cost = per_image_cost(name)
        print(f"  {name:28s} {cost['inference_us']:12.0f} {cost['observe_us']:12.1f} {100 * cost['observe_us'] / cost['inference_us']:14.2f}%")
    with running_server(Settings(model_repository=MODELS, models=["shapes_classifier"])) as (base, app):
        rates = asyncio.run(interleaved(base, app, args))
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(f"served shapes_classifier, c={args.concurrency}, {args.rounds} interleaved pairs of {args.window_s}s windows:")
    print(f"  drift on  median {on:7.1f} req/s  (range {min(rates['on']):.1f}-{max(rates['on']):.1f})")
    print(f"  drift off median {off:7.1f} req/s  (range {min(rates['off']):.1f}-{max(rates['off']):.1f})")
    print(f"  cost of monitoring: {100 * (off - on) / off:+.1f}% of throughput (medians)")
    pairs = [100 * (1 - a / b) for a, b in zip(rates["on"], rates["off"])]
    print(f"  cost per interleaved pair: median {statistics.median(pairs):+.1f}% (range {min(pairs):+.1f} to {max(pairs):+.1f}%,"
          f" {len(pairs)} pairs; target <= 2%)")


if __name__ == "__main__":
    main()
