"""ECA next to the related channel-attention families: the trade-off table, measured on this machine.

    python bench/families_bench.py [--repository DIR] [--rounds 3] [--window-s 2] [--served-s 3]

Per model: parameters, multiply-adds at 224 px (torch's FLOP counter / 2, in 2^30 units as the zoo
table), ONNX Runtime images/s at batch 1 and 8 on the exported graph as it is served (logits plus every
attention output), and requests/s of the real server (``eca-serve serve`` on the exported repository,
ONNX Runtime backend, default CPU batching policy) at concurrency 16: v1 classify, multipart JPEG uploads
of scikit-image's photographs, sent by ``bench/loadgen.py``.

The export runs first, in a child process at nice 19 (skipped when ``--repository`` already holds the
models). Then every round, holding ``--lock`` (the shared bench lock) for that round only, measures each
model's three cells back to back (ORT batch 1, ORT batch 8 while the server idles, then served c=16),
the model order rotating from round to round: the CPU is shared and its speed drifts, so only cells of
the same round compare, and the table gives the median over rounds with the min-max. The windows are
short (seconds per cell, see the flags), so slow cells count few runs: read the spread.

Weights are seeded random (speed does not depend on them); DGC heads drop their final share of input
channels (gate factor 0.25), as after the authors' schedule. DGC's FLOPs are those of the dense
computation we run (masked channels are multiplied by zero, not skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from loadgen import multipart_request, run_load  # noqa: E402

MODELS = {
    "ECA-ResNet-50": "eca_resnet50",
    "SE-ResNet-50": "se_resnet50",
    "ResNeSt-50": "resnest50",
    "ResNet-50": "resnet50",
    "DGC-ResNet-18": "dgc_resnet18",
    "ResNet-18": "resnet18",
}
BATCHES = (1, 8)
CONCURRENCY = 16
BASELINE = "resnet50"
SIZE = 224
COSTS_FILE = "families_costs.json"  # beside the model folders; the server only reads */<version>/config.json


def build(name: str) -> Any:
    """Seeded random model in eval mode; DGC at its final gating with saliency near 1 (no overflow)."""
    import torch

    import eca_serve
    from eca_serve.layers import DynamicMultiHeadConv
    from eca_serve.models.dgc import set_inactive_channels

    torch.manual_seed(0)
    model = eca_serve.create_model(name)
    if model.config.attention == "dgc":
        set_inactive_channels(model, 1.0)
        for m in model.modules():
            if isinstance(m, DynamicMultiHeadConv):
                for head in m.heads:
                    head.fc2.weight.data.mul_(0.01)
                    head.fc2.bias.data = 0.5 + torch.rand(head.fc2.bias.shape)
    return model.eval()


def export_repository(root: Path) -> None:
    """Export every model (ONNX, parity-checked) into ``root`` and write their parameters and FLOPs."""
    from eca_serve.export import ExportOptions, export_model
    from eca_serve.models.profile import measure

    costs = {}
    for label, name in MODELS.items():
        model = build(name)
        cost = measure(model, (SIZE, SIZE))
        costs[name] = {"params": cost.params, "params_m": cost.params_m, "gflops": cost.gflops}
        export_model(model, root / name / "1", ExportOptions(name=name, formats=("onnx",)))
        print(f"exported {label}", file=sys.stderr, flush=True)
    (root / COSTS_FILE).write_text(json.dumps(costs, indent=1))


def ensure_repository(root: Path) -> dict[str, dict[str, float]]:
    """The costs of an exported repository, exporting it first (at nice 19) when it is incomplete."""
    entries = [root / n / "1" / "config.json" for n in MODELS.values()]
    complete = (root / COSTS_FILE).is_file() and all(e.is_file() for e in entries)
    if not complete:
        subprocess.run(["nice", "-n", "19", sys.executable, __file__, "--export-only", "--repository", str(root)],
                       check=True)
    return json.loads((root / COSTS_FILE).read_text())


@contextlib.contextmanager
def bench_lock(path: Path) -> Iterator[float]:
    """Hold the shared bench lock (the file ``flock`` uses); yields the seconds spent waiting for it."""
    start = time.perf_counter()
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - start
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ort_window(sess: Any, batch: np.ndarray, seconds: float) -> float:
    """Images/s of back-to-back runs over about ``seconds`` (at least one run after a warm-up run)."""
    sess.run(None, {"input": batch})
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < seconds:
        sess.run(None, {"input": batch})
        runs += 1
    return runs * len(batch) / (time.perf_counter() - start)


Cells = dict[tuple[str, str], list[float]]


def measure_rounds(root: Path, args: argparse.Namespace) -> Cells:
    """Every model's cells, round after round (the lock held per round); ``{(name, cell): [per round]}``."""
    import onnxruntime as ort
    from serve_bench import photos

    from tests.reliability.serverproc import start_server

    small = [v for k, v in photos().items() if k != "coffee_12mp"]
    sessions = {n: ort.InferenceSession(str(root / n / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
                for n in MODELS.values()}
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, SIZE, SIZE), dtype=np.float32) for b in BATCHES}
    cells: Cells = {}
    env = {"ECA_SERVE_DEVICE": "cpu", "ECA_SERVE_MODELS": json.dumps(list(MODELS.values()))}
    server = start_server(root, env, ready_timeout_s=600)
    try:
        names = list(MODELS.values())
        for r in range(args.rounds):
            with bench_lock(args.lock) as waited:
                started = time.perf_counter()
                for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
                    for b in BATCHES:  # the server idles meanwhile
                        add(cells, name, f"ort_b{b}", ort_window(sessions[name], inputs[b], args.window_s))
                    served_cell(cells, server.base, name, small, args.served_s)
                held = time.perf_counter() - started
            print(f"round {r + 1}/{args.rounds}: waited {waited:.0f} s for the lock, held it {held:.0f} s",
                  file=sys.stderr, flush=True)
    finally:
        server.stop(timeout_s=60)
    return cells


def add(cells: Cells, name: str, what: str, value: float) -> None:
    cells.setdefault((name, what), []).append(value)


def served_cell(cells: Cells, base: str, name: str, photos: list[bytes], seconds: float) -> None:
    """Requests/s answered 200 at concurrency 16 (and the count of other answers), after a warm-up that
    fills the queue: 1.5 turnovers at the model's previous rate (3 s the first time)."""
    last = cells.get((name, "served"), [0.0])[-1]
    warmup = max(1.0, 1.5 * CONCURRENCY / last) if last else 3.0
    url = f"{base}/v1/models/{name}/classify"
    result = asyncio.run(run_load(url, [multipart_request(url, p) for p in photos], CONCURRENCY, seconds, warmup))
    add(cells, name, "served", result.statuses.get(200, 0) / result.seconds)
    failed = sum(v for k, v in result.statuses.items() if k != 200) + sum(result.errors.values())
    add(cells, name, "served_not_200", failed)


def cell(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def relative(cells: Cells, name: str, what: str) -> str:
    """Per-round ratio to ResNet-50's cell of the same round: the slow drift between rounds cancels."""
    ratios = [a / b for a, b in zip(cells[(name, what)], cells[(BASELINE, what)]) if b]
    return cell(ratios, 2) if ratios else "-"


def print_table(costs: dict[str, dict[str, float]], cells: Cells, args: argparse.Namespace) -> None:
    print(f"\nCPU, {SIZE} px, shared 2-core machine: median of {args.rounds} rounds (min-max); ORT windows "
          f"{args.window_s:g} s, served windows {args.served_s:g} s at concurrency {CONCURRENCY}; "
          f"x ResNet-50: ratio to ResNet-50 in the same round\n")
    print("| model | params | FLOPs (G) | ORT img/s batch 1 | ORT img/s batch 8 | served req/s c=16 "
          "| ORT batch 1 x ResNet-50 | served x ResNet-50 |")
    print("|---|---|---|---|---|---|---|---|")
    for label, name in MODELS.items():
        c = costs[name]
        failed = int(sum(cells[(name, "served_not_200")]))
        served = cell(cells[(name, "served")]) + (f", {failed} not 200" if failed else "")
        print(f"| {label} | {int(c['params']):,} ({c['params_m']:.2f} M) | {c['gflops']:.2f} | "
              f"{cell(cells[(name, 'ort_b1')])} | {cell(cells[(name, 'ort_b8')])} | {served} | "
              f"{relative(cells, name, 'ort_b1')} | {relative(cells, name, 'served')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, help="export into (or reuse) this folder; default: a temporary one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=2.0, help="seconds per ORT cell")
    parser.add_argument("--served-s", type=float, default=3.0, help="measured seconds per served cell (after warm-up)")
    parser.add_argument("--lock", type=Path, default=Path("/tmp/bench.lock"), help="shared lock, held per round")
    parser.add_argument("--json", type=Path, help="also write the per-round cells here")
    parser.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.repository or Path(tmp)
        if args.export_only:
            export_repository(root)
            return
        costs = ensure_repository(root)
        cells = measure_rounds(root, args)
    if args.json:
        args.json.write_text(json.dumps({"costs": costs, "cells": {f"{n}/{w}": v for (n, w), v in cells.items()}}))
    print_table(costs, cells, args)


if __name__ == "__main__":
    main()
