"""FP32 vs INT8 throughput: raw backend img/s, and optionally served HTTP img/s, in alternating windows.

Run: ``python bench/quantize_bench.py [--models eca_resnet50,eca_mobilenet_v2] [--shipped] [--served]
[--rounds 5] [--window 1.0] [--gates-quantized]``.

Each zoo model is exported with seeded random weights (ONNX only) into a temporary repository and
quantized with `eca_serve.quantize` (calibration: 16 Shapes images through the entry's own
preprocessing; random weights make accuracy meaningless here, speed is what is measured). With
``--shipped`` the shipped ``models/shapes_classifier/1`` is quantized too (64 training-distribution
images). Backends are built as the server builds them (``create_backend`` with the CPU policy's
options). Then, per batch size, the variants run in turn for ``--window`` seconds each, for
``--rounds`` rounds: on a CPU shared with other work the load drifts, and alternating windows let
every variant see the same drift. The table gives the median img/s with the min-max over rounds,
and the median of the per-round INT8/FP32 ratios. ``--served`` also starts the real app on the
shipped repository copy and alternates windows of concurrent HTTP requests to version 1 and 2.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def export_zoo(root: Path, name: str) -> Path:
    """``root/name/1``: the zoo model with seeded random weights, ONNX only."""
    import torch

    from eca_serve import create_model
    from eca_serve.export import ExportOptions, export_model

    torch.manual_seed(0)
    export_model(create_model(name), root / name / "1", ExportOptions(name=name, formats=("onnx",)))
    return root / name / "1"


def quantize(root: Path, name: str, calibration: Path, out_version: int, gates_float: bool) -> Path:
    """Quantize ``name:1`` into ``out_version`` (no accuracy bound: speed only); returns its folder."""
    from eca_serve.quantize.entry import QuantizeOptions, quantize_entry

    options = QuantizeOptions(calibration=calibration, out_version=out_version, max_drop=100.0,
                              attention_in_float=gates_float, command="bench/quantize_bench.py")
    return quantize_entry(root, name, 1, options).folder


def backend_for(folder: Path) -> tuple[Any, Any]:
    """(backend, config) built as the CPU server builds it, warmed up."""
    from eca_serve.batching import BatchPolicy
    from eca_serve.pipelines.manager import backend_options_for
    from eca_serve.repository import read_config
    from eca_serve.runtime import BackendOptions, create_backend, warm_up

    config = read_config(folder)
    options = backend_options_for(BackendOptions("onnxruntime", "cpu"), BatchPolicy.for_device("cpu"))
    backend = create_backend(folder, config, options)
    warm_up(backend, config, batch_sizes=(1, 8))
    return backend, config


def rate(call: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``call`` run back to back for ``seconds``."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        count += 1
    return count / (time.perf_counter() - start)


def alternate(calls: dict[str, Callable[[], object]], per_call: int, rounds: int, window: float) -> dict[str, list[float]]:
    """Images/s of each call in ``rounds`` rounds of back-to-back ``window``-second turns."""
    rates: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            rates[key].append(per_call * rate(call, window))
    return rates


def summarise(model: str, batch: int | str, rates: dict[str, list[float]]) -> list[list[str]]:
    """Table rows: variant, median img/s (min-max), median per-round ratio to fp32."""
    rows = []
    for key, values in rates.items():
        ratios = [v / f for v, f in zip(values, rates["fp32"])]
        rows.append([model, str(batch), key, f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})",
                     f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"])
    return rows


def raw_rows(model: str, folders: dict[str, Path], rounds: int, window: float) -> list[list[str]]:
    """Alternating-window raw backend throughput of every variant at batch 1 and 8."""
    backends = {key: backend_for(folder) for key, folder in folders.items()}
    rows = []
    for batch in (1, 8):
        size = next(iter(backends.values()))[1].input.size
        x = np.random.default_rng(0).standard_normal((batch, 3, *size), dtype=np.float32)
        calls = {key: (lambda b=b: b.infer(x)) for key, (b, _) in backends.items()}
        rows += summarise(model, batch, alternate(calls, batch, rounds, window))
    return rows


def served_rows(root: Path, name: str, rounds: int, window: float, concurrency: int = 8) -> list[list[str]]:
    """HTTP img/s of versions 1 (fp32) and 2 (int8) of one served model, alternating windows."""
    import httpx

    from eca_serve.settings import Settings
    from tests.serving_utils import running_server

    data = (REPO / "examples" / "star.png").read_bytes()

    async def load(base: str, version: int) -> float:
        url, done = f"{base}/v1/models/{name}/classify?version={version}&top_k=1", 0
        async with httpx.AsyncClient(timeout=30) as client:
            deadline, start = time.perf_counter() + window, time.perf_counter()

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    response = await client.post(url, content=data, headers={"content-type": "image/png"})
                    response.raise_for_status()
                    done += 1

            await asyncio.gather(*[worker() for _ in range(concurrency)])
            return done / (time.perf_counter() - start)

    with running_server(Settings(model_repository=root, models=[name])) as (base, _):
        asyncio.run(load(base, 1))
        asyncio.run(load(base, 2))  # warm-up of both
        rates: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(rounds):
            rates["fp32"].append(asyncio.run(load(base, 1)))
            rates["int8"].append(asyncio.run(load(base, 2)))
    return summarise(f"{name} (HTTP, {concurrency} concurrent)", "served", rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="eca_resnet50,eca_mobilenet_v2", help="zoo names, comma separated ('' for none)")
    parser.add_argument("--shipped", action="store_true", help="also the shipped models/shapes_classifier/1")
    parser.add_argument("--served", action="store_true", help="with --shipped: HTTP throughput of v1 vs v2 too")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=1.0, help="seconds per variant per round")
    parser.add_argument("--gates-quantized", action="store_true", help="add an INT8 variant with quantized attention gates")
    args = parser.parse_args()

    from eca_serve.cli._output import print_table
    from eca_serve.data import write_imagefolder

    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        write_imagefolder(Path(tmp) / "calib16", 16, seed=1, size=224)
        write_imagefolder(Path(tmp) / "calib64", 64, seed=1)
        entries = [(m, export_zoo(root, m), Path(tmp) / "calib16") for m in filter(None, args.models.split(","))]
        if args.shipped:
            shutil.copytree(REPO / "models" / "shapes_classifier" / "1", root / "shapes_classifier" / "1")
            entries.append(("shapes_classifier", root / "shapes_classifier" / "1", Path(tmp) / "calib64"))
        for model, folder, calibration in entries:
            folders = {"fp32": folder, "int8": quantize(root, model, calibration, 2, gates_float=True)}
            if args.gates_quantized:
                folders["int8 gates int8"] = quantize(root, model, calibration, 3, gates_float=False)
            rows += raw_rows(model, folders, args.rounds, args.window)
            if args.served and model == "shapes_classifier":
                shutil.rmtree(root / model / "3", ignore_errors=True)
                rows += served_rows(root, model, args.rounds, args.window)
    print_table("FP32 vs INT8 img/s: median (min-max) over alternating windows",
                ["model", "batch", "variant", "img/s", "vs fp32"], rows)


if __name__ == "__main__":
    main()
