"""ECA's and SE's cost over the plain network in ONNX Runtime, FP32 and INT8, interleaved.

Run: ``python bench/attention_cost_bench.py [--plain resnet50 --attended eca_resnet50,se_resnet50]
[--rounds 20] [--reps 5] [--batch 1] [--threads 1] [--no-int8] [--workdir DIR [--prepare-only]]``.
With ``--workdir`` the exported and quantized entries are kept there and reused by the next run, so that
the slow preparation can run apart from the timing (on a shared machine: only the timing under a lock).

Every model is built by `eca_serve.create_model` with seed 0 and written by `eca_serve.export.export_model`
(ONNX only, as ``eca-serve export`` writes it: gates rewritten by `eca_serve.export.gates`), then
quantized by `eca_serve.quantize` (16 Shapes calibration images through the entry's preprocessing; gates'
weights float, the default). Sessions are ONNX Runtime CPU sessions with the server's optimisation level
on ``--threads`` threads (1 by default: two-thread runs drift too much on a shared 2-core VM to compare).

Measurement: each round runs every variant once in turn, ``--reps`` times, and keeps each variant's
fastest call of the round; a variant's cost is its per-round time over the plain network's, minus 1.
Interleaving single calls lets every variant see the same drift of a loaded machine, and the per-round
minimum discards calls another process interrupted. Printed: the median cost with the min-max over rounds,
and the fastest call of each variant over the whole run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from quantize_bench import export_zoo  # noqa: E402


def quantize(root: Path, name: str, calibration: Path) -> Path:
    """``root/name/2``: INT8 of version 1 (speed only: no accuracy bound)."""
    from eca_serve.quantize.entry import QuantizeOptions, quantize_entry

    options = QuantizeOptions(calibration=calibration, out_version=2, max_drop=100.0, command="bench/attention_cost_bench.py")
    return quantize_entry(root, name, 1, options).folder


def interleaved(sessions: dict[str, Any], x: np.ndarray, rounds: int, reps: int) -> dict[str, list[float]]:
    """Per round, each session's fastest of ``reps`` calls (seconds), the sessions called in turn."""
    best: dict[str, list[float]] = {key: [] for key in sessions}
    for _ in range(rounds):
        times: dict[str, list[float]] = {key: [] for key in sessions}
        for _ in range(reps):
            for key, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {"input": x})
                times[key].append(time.perf_counter() - start)
        for key in sessions:
            best[key].append(min(times[key]))
    return best


def rows(precision: str, plain: str, best: dict[str, list[float]]) -> list[list[str]]:
    """Table rows: variant, fastest call, median cost over ``plain`` (min-max over rounds)."""
    out = []
    for key, values in best.items():
        costs = [100 * (v / p - 1) for v, p in zip(values, best[plain])]
        cost = "-" if key == plain else f"{statistics.median(costs):+.1f}% ({min(costs):+.1f}..{max(costs):+.1f})"
        out.append([precision, key, f"{1000 * min(values):.1f}", cost])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plain", default="resnet50")
    parser.add_argument("--attended", default="eca_resnet50,se_resnet50", help="comma separated zoo names")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5, help="calls per variant per round (the fastest counts)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-int8", action="store_true", help="FP32 only (quantizing takes minutes)")
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the entries here")
    parser.add_argument("--prepare-only", action="store_true", help="with --workdir: export and quantize, no timing")
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    """Prepare the entries under ``work`` (reusing finished ones), then time them and print the table."""

    from eca_serve.cli._output import print_table
    from eca_serve.data import write_imagefolder
    from eca_serve.quantize.graph import cpu_session

    names = [args.plain, *filter(None, args.attended.split(","))]
    table: list[list[str]] = []
    root = work / "models"
    done = lambda folder: (folder / "config.json").exists()  # noqa: E731
    variants = {"fp32": {n: root / n / "1" if done(root / n / "1") else export_zoo(root, n) for n in names}}
    if not args.no_int8:
        if not (work / "calib16").exists():
            write_imagefolder(work / "calib16", 16, seed=1, size=224)
        variants["int8"] = {n: root / n / "2" if done(root / n / "2") else quantize(root, n, work / "calib16") for n in names}
    if args.prepare_only:
        return
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224), dtype=np.float32)
    for precision, found in variants.items():
        sessions = {name: cpu_session(folder / "model.onnx", args.threads) for name, folder in found.items()}
        for session in sessions.values():
            session.run(None, {"input": x})
        table += rows(precision, args.plain, interleaved(sessions, x, args.rounds, args.reps))
    print_table(f"Cost over {args.plain}, batch {args.batch}, {args.threads} thread(s): {args.rounds} rounds x "
                f"{args.reps} interleaved calls", ["precision", "model", "fastest ms", "cost: median (min..max)"], table)


if __name__ == "__main__":
    main()
