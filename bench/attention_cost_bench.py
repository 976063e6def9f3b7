"""ECA's (and SE's) cost over the plain network per engine, precision and batch, interleaved, one process.

Run: ``nice python bench/attention_cost_bench.py [--plain resnet50 --attended eca_resnet50[,se_resnet50]]
[--engines onnxruntime,openvino] [--precisions fp32,int8] [--batch 1,8] [--clock cpu|wall] [--rewrite]
[--rounds 12] [--reps 3] [--threads 1] [--workdir DIR [--prepare-only]]``.
The exported and quantized entries are kept in ``--workdir`` (default: a fixed folder under the system's
temporary directory) and reused by the next run, so the slow preparation runs once.

Every model is built by `eca_serve.create_model` with seed 0 and written by `eca_serve.export.export_model`
(ONNX only, as ``eca-serve export`` writes it: gates rewritten by `eca_serve.export.gates`); INT8 is
`eca_serve.quantize` of it (16 Shapes calibration images through the entry's preprocessing, gates' weights
float: the QDQ file both engines run). With ``--rewrite`` each attended model also gets a ``_hoist`` variant:
the exact pool-before-conv3 rewrite of `gate_hoist` (checked: every output within 1e-5 of the original in
ONNX Runtime FP32), exported and quantized the same way.

Engines: ONNX Runtime CPU sessions with the server's optimisation level; OpenVINO ``compile_model`` on the
CPU plugin with the batch made static, one stream, latency hint, FP32 inference precision (the QDQ file
keeps its int8 convolutions). Both on ``--threads`` threads (1 by default: two-thread runs drift too much
on a shared 2-core VM to compare).

Measurement: per engine x precision x batch, each round runs every variant once in turn, ``--reps`` times,
and keeps each variant's fastest call of the round; ``--clock cpu`` (default) times calls with the process's
CPU time, which other jobs on a loaded machine do not inflate, ``wall`` with the wall clock. A variant's
cost is its per-round time over the plain network's, minus 1. Printed: the CPU model and its vector flags,
engine versions, then per cell the median cost with the min..max over rounds and each variant's fastest call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gate_hoist import hoisted_copy  # noqa: E402
from quantize_bench import export_zoo  # noqa: E402

Runner = Callable[[np.ndarray], Any]
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")
HOIST = "_hoist"


def cpu_line() -> str:
    """``model name`` and the vector flags of interest from /proc/cpuinfo (``unknown CPU`` elsewhere)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    return f"{model}; flags: {' '.join(f for f in FLAGS if f in flags) or 'none of ' + ','.join(FLAGS)}"


def ort_runner(path: Path, threads: int, shape: tuple[int, ...]) -> Runner:
    """``x [shape] -> outputs`` of an ONNX Runtime CPU session as the server builds it."""
    from eca_serve.quantize.graph import cpu_session

    session = cpu_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def openvino_runner(path: Path, threads: int, shape: tuple[int, ...]) -> Runner:
    """``x [shape] -> outputs`` of an OpenVINO CPU infer request, the input shape made static."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0].get_any_name(): list(shape)})
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32"}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return lambda x: request.infer({0: x})


ENGINES: dict[str, Callable[[Path, int, tuple[int, ...]], Runner]] = {"onnxruntime": ort_runner, "openvino": openvino_runner}


def interleaved(runners: dict[str, Runner], x: np.ndarray, rounds: int, reps: int, clock: Callable[[], float]) -> dict[str, list[float]]:
    """Per round, each runner's fastest of ``reps`` calls (seconds of ``clock``), the runners called in turn."""
    best: dict[str, list[float]] = {key: [] for key in runners}
    for _ in range(rounds):
        times: dict[str, list[float]] = {key: [] for key in runners}
        for _ in range(reps):
            for key, run in runners.items():
                start = clock()
                run(x)
                times[key].append(clock() - start)
        for key in runners:
            best[key].append(min(times[key]))
    return best


def rows(cell: list[str], plain: str, best: dict[str, list[float]]) -> list[list[str]]:
    """Table rows: the cell, variant, fastest call, median cost over ``plain`` (min..max over rounds)."""
    out = []
    for key, values in best.items():
        costs = [100 * (v / p - 1) for v, p in zip(values, best[plain])]
        cost = "-" if key == plain else f"{statistics.median(costs):+.1f}% ({min(costs):+.1f}..{max(costs):+.1f})"
        out.append([*cell, key, f"{1000 * min(values):.1f}", cost])
    return out


def quantize(root: Path, name: str, calibration: Path) -> Path:
    """``root/name/2``: INT8 of version 1 (speed only: no accuracy bound)."""
    from eca_serve.quantize.entry import QuantizeOptions, quantize_entry

    options = QuantizeOptions(calibration=calibration, out_version=2, max_drop=100.0, command="bench/attention_cost_bench.py")
    return quantize_entry(root, name, 1, options).folder


def hoisted_entry(root: Path, name: str) -> Path:
    """``root/name+hoist/1``: entry ``name/1`` with `gate_hoist` applied to its graph; prints the check."""
    import shutil

    from eca_serve.repository import artifact_spec, read_config, write_config

    src, dst = root / name / "1", root / (name + HOIST) / "1"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    moved = hoisted_copy(src / "model.onnx", dst / "model.onnx")
    config = read_config(dst, verify=False)
    artifacts = config.artifacts | {"onnx": artifact_spec(dst / "model.onnx", "onnx")}
    write_config(dst, config.model_copy(update={"name": name + HOIST, "artifacts": artifacts}))
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224), dtype=np.float32)
    before, after = ort_runner(src / "model.onnx", 0, x.shape)(x), ort_runner(dst / "model.onnx", 0, x.shape)(x)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(before, after))
    print(f"{name}{HOIST}: {moved} gates pooled before their conv; max |output diff| vs {name} = {worst:.2e}")
    if worst > 1e-5:
        raise SystemExit(f"{name}{HOIST}: outputs differ by {worst:.2e} > 1e-5")
    return dst


def prepare(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Path]]:
    """``precision -> variant -> entry folder`` under ``work``, reusing finished entries."""
    from eca_serve.data import write_imagefolder

    attended = [n for n in args.attended.split(",") if n]
    root = work / "models"
    done = lambda folder: (folder / "config.json").exists()  # noqa: E731
    fp32 = {n: root / n / "1" if done(root / n / "1") else export_zoo(root, n) for n in [args.plain, *attended]}
    if args.rewrite:
        fp32 |= {n + HOIST: root / (n + HOIST) / "1" if done(root / (n + HOIST) / "1") else hoisted_entry(root, n) for n in attended}
    variants = {"fp32": fp32}
    if "int8" in args.precisions:
        if not (work / "calib16").exists():
            write_imagefolder(work / "calib16", 16, seed=1, size=224)
        variants["int8"] = {n: root / n / "2" if done(root / n / "2") else quantize(root, n, work / "calib16") for n in fp32}
    return {p: variants[p] for p in args.precisions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plain", default="resnet50")
    parser.add_argument("--attended", default="eca_resnet50", help="comma separated zoo names")
    parser.add_argument("--engines", default="onnxruntime,openvino", help=f"comma separated: {','.join(ENGINES)}")
    parser.add_argument("--precisions", default="fp32,int8", help="comma separated: fp32,int8")
    parser.add_argument("--batch", default="1,8", help="comma separated batch sizes")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="cpu: process CPU time; wall: wall clock")
    parser.add_argument("--rewrite", action="store_true", help="also time the exact pool-before-conv3 rewrite")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--reps", type=int, default=3, help="calls per variant per round (the fastest counts)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "eca_attention_cost",
                        help="keep (and reuse) the entries here")
    parser.add_argument("--prepare-only", action="store_true", help="export and quantize, no timing")
    args = parser.parse_args()
    args.precisions = [p for p in args.precisions.split(",") if p]
    engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in engines if e not in ENGINES] + [p for p in args.precisions if p not in ("fp32", "int8")]
    if unknown:
        parser.error(f"unknown engine or precision: {unknown}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    variants = prepare(args, args.workdir)
    if not args.prepare_only:
        measure(args, engines, [int(b) for b in args.batch.split(",")], variants)


def measure(args: argparse.Namespace, engines: list[str], batches: list[int], variants: dict[str, dict[str, Path]]) -> None:
    """Time every engine x precision x batch cell and print the table."""
    import onnxruntime

    from eca_serve.cli._output import print_table

    versions = [f"onnxruntime {onnxruntime.__version__}"]
    if "openvino" in engines:
        import openvino

        versions.append(f"openvino {openvino.__version__}")
    print(f"CPU: {cpu_line()}\n{', '.join(versions)}; {args.threads} thread(s), clock {args.clock}", flush=True)
    table: list[list[str]] = []
    for engine in engines:
        for precision, found in variants.items():
            for batch in batches:
                x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
                runners = {name: ENGINES[engine](folder / "model.onnx", args.threads, x.shape) for name, folder in found.items()}
                for run in runners.values():
                    run(x)
                best = interleaved(runners, x, args.rounds, args.reps, CLOCKS[args.clock])
                cell = rows([engine, precision, str(batch)], args.plain, best)
                for row in cell:
                    print("  ".join(row), flush=True)
                table += cell
    print_table(f"Cost over {args.plain}, {args.threads} thread(s), clock {args.clock}: {args.rounds} rounds x "
                f"{args.reps} interleaved calls (fastest per round)",
                ["engine", "precision", "batch", "model", "fastest ms", "cost: median (min..max)"], table)


if __name__ == "__main__":
    main()
