"""INT8 for OpenVINO, two paths side by side: the QDQ entry as it is (A) or NNCF post-training quantization (B).

Run: ``nice python bench/int8_paths_bench.py [--entry shapes_classifier] [--zoo eca_resnet50] [--rounds 5]
[--seconds 1] [--batch-sizes 1,8] [--threads 2] [--presets performance,mixed]``. Needs ``nncf`` besides the dev
install (``pip install nncf``): no extra carries it, since no shipped path uses it (docs/performance.md says why).

- **A**: the entry's QDQ INT8 graph (``eca-serve quantize``: ONNX Runtime static QDQ, minmax, weights int8 per
  channel, activations uint8 per tensor, the attention weights' nodes float), run by ONNX Runtime and by
  OpenVINO as it is.
- **B**: ``nncf.quantize`` of the same FP32 ONNX (its gates first in the exporter's form, as A does),
  converted by OpenVINO, on the same calibration images, with every gate node kept float through NNCF's
  ``ignored_scope``: the pool, the Conv1d / SE convs, the sigmoid, the views and the Mul that scales the map.
  One row per NNCF preset (``performance``: symmetric activations, NNCF's default for CPU; ``mixed``:
  asymmetric activations, like A's uint8).

Accuracy (the shipped ``--entry``, FP32 version 1 and its INT8 version 2): the ``eca-serve quantize`` report's
numbers against ONNX Runtime FP32 on the held-out Shapes split of models/README.md (2,000 images, seed 2;
calibration: the 100 images of seed 1), generated here with ``eca-serve data shapes``. Speed: every variant
compiled as the server compiles it (``create_session`` / ``create_openvino_session`` with ``--threads``
intra-op threads, one stream), windows of ``--seconds`` alternating between variants, ``--rounds`` times;
img/s is the median over rounds, the ratio the median (min-max) of per-round ratios to ONNX Runtime FP32.
``--zoo`` models are exported with seeded random weights: their accuracy means nothing, only speed is shown.
The CPU model and its vector flags head the output.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from eca_serve.repository import read_config  # noqa: E402
from eca_serve.runtime import BackendOptions  # noqa: E402
from eca_serve.runtime.engines import cpu_flags, cpu_model  # noqa: E402

VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
Session = Any  # ONNX Runtime's session calls: run, get_inputs, get_outputs


def shapes(out: Path, count: int, seed: int) -> Path:
    """``eca-serve data shapes --kind classify`` into ``out`` (skipped when it exists)."""
    if not out.exists():
        subprocess.run([sys.executable, "-m", "eca_serve.cli", "data", "shapes", "--kind", "classify", "--out", str(out),
                        "--count", str(count), "--seed", str(seed)], check=True, capture_output=True)
    return out


def nncf_quantize(source: Path, target: Path, calibration: np.ndarray, attention_outputs: list[str], preset: str) -> Path:
    """Path B: ``target`` (OpenVINO IR .xml) = NNCF INT8 of ONNX ``source`` with every gate node float.

    Args:
        calibration: float32 [N, 3, H, W], fed one image at a time (all N used).
        preset: ``performance`` or ``mixed`` (NNCF's QuantizationPreset).
    """
    import nncf
    import onnx
    import openvino as ov

    from eca_serve.export.gates import rewrite_gates
    from eca_serve.quantize.graph import attention_nodes

    model = onnx.load(str(source))
    rewrite_gates(model, attention_outputs)
    gates = target.with_suffix(".gates.onnx")
    onnx.save(model, str(gates))
    weights = set(attention_nodes(model, attention_outputs))
    # The rest of each gate: the pool feeding its weights and the Mul they scale the map with.
    ignored = weights | {n.name for n in model.graph.node if n.op_type in ("GlobalAveragePool", "ReduceMean", "Mul")
                         and (n.op_type == "Mul" or _feeds(model, n, weights))}
    quantized = nncf.quantize(ov.convert_model(str(gates)), nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))]),
                              preset=nncf.QuantizationPreset(preset), subset_size=len(calibration),
                              ignored_scope=nncf.IgnoredScope(names=sorted(ignored), validate=False))
    ov.save_model(quantized, str(target))
    gates.unlink()
    return target


def _feeds(model: Any, node: Any, names: set[str]) -> bool:
    """Whether an output of ``node`` is read by a node named in ``names``."""
    return any(set(node.output) & set(n.input) for n in model.graph.node if n.name in names)


def sessions(paths: dict[str, tuple[str, Path, str]], threads: int) -> dict[str, Session]:
    """label -> session, each built as the server builds it: (engine, graph file, precision) per label."""
    from eca_serve.runtime.onnx_backend import create_session
    from eca_serve.runtime.openvino_backend import create_openvino_session

    out = {}
    for label, (engine, path, precision) in paths.items():
        options = BackendOptions(engine, "cpu", threads=threads, precision=precision)
        out[label] = (create_session(path, options) if engine == "onnxruntime"
                      else create_openvino_session(path, options, f"bench/{label}"))
    return out


def runtime_graph(runs: dict[str, Session]) -> None:
    """Print, per OpenVINO variant, its runtime graph's convolutions and reorders by executed precision."""
    from collections import Counter

    for label, session in runs.items():
        if not hasattr(session, "compiled"):
            continue
        kinds = Counter((str(info["layerType"].astype(str)), str(info["runtimePrecision"].astype(str)))
                        for info in (op.get_rt_info() for op in session.compiled.get_runtime_model().get_ops()))
        shown = {f"{kind} {precision}": n for (kind, precision), n in sorted(kinds.items())
                 if kind in ("Convolution", "Reorder", "Reduce")}
        print(f"{label:33} runtime graph: {shown}")


def outputs(session: Session, inputs: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """Every output of ``session`` on ``inputs`` [N, 3, H, W]: name -> [N, ...]."""
    names, feed = [o.name for o in session.get_outputs()], session.get_inputs()[0].name
    parts = [session.run(names, {feed: inputs[i:i + batch]}) for i in range(0, len(inputs), batch)]
    return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}


def accuracy(runs: dict[str, Session], inputs: np.ndarray, labels: np.ndarray, attention: list[str]) -> None:
    """Print the quantize report's numbers of each variant against the first (ONNX Runtime FP32)."""
    from eca_serve.quantize.report import compare

    reference = None
    print(f"{'variant':33} {'top-1':>6} {'agree':>6} {'max|dp|':>7} {'att max':>7} {'att first':>9} {'att mean':>8}")
    for label, session in runs.items():
        result = outputs(session, inputs)
        reference = reference or result
        c = compare(reference, result, labels, attention)
        first = next(iter(c.attention_per_layer.values()))
        print(f"{label:33} {c.top1_int8:6.2f} {c.agreement:6.2f} {c.max_abs_prob_diff:7.3f} "
              f"{c.max_abs_attention_diff:7.3f} {first:9.3f} {c.mean_abs_attention_diff:8.5f}", flush=True)


def speed(runs: dict[str, Session], shape: tuple[int, int], batch_sizes: list[int], rounds: int, seconds: float) -> None:
    """Print img/s per variant and batch size, windows alternating, and per-round ratios to the first variant."""
    print(f"{'variant':33} {'batch':>5} {'img/s':>8} {'vs ORT FP32':>11} {'min-max':>11}")
    for size in batch_sizes:
        x = np.random.default_rng(0).standard_normal((size, 3, *shape), dtype=np.float32)
        calls = {label: _call(s, x) for label, s in runs.items()}
        for call in calls.values():
            call(), call()
        rates: dict[str, list[float]] = {label: [] for label in calls}
        for _ in range(rounds):
            for label, call in calls.items():
                rates[label].append(size * _rate(call, seconds))
        base = rates[next(iter(rates))]
        for label, got in rates.items():
            ratios = [r / b for r, b in zip(got, base)]
            print(f"{label:33} {size:5d} {statistics.median(got):8.1f} {statistics.median(ratios):10.2f}x "
                  f"{min(ratios):5.2f}-{max(ratios):4.2f}", flush=True)


def _call(session: Session, x: np.ndarray) -> Callable[[], object]:
    names, feed = [o.name for o in session.get_outputs()], session.get_inputs()[0].name
    return lambda: session.run(names, {feed: x})


def _rate(call: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``call`` back to back for ``seconds`` (at least 2 calls)."""
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        call()
        n += 1
    return n / (time.perf_counter() - start)


def variants(fp32: Path, qdq: Path, nncf_graphs: dict[str, Path]) -> dict[str, tuple[str, Path, str]]:
    """label -> (engine, graph, precision): ORT FP32 first (the baseline), then OpenVINO FP32, A, B."""
    out = {"ORT FP32": ("onnxruntime", fp32, "fp32"), "OpenVINO FP32": ("openvino", fp32, "fp32"),
           "A: QDQ on ORT": ("onnxruntime", qdq, "int8"), "A: QDQ on OpenVINO": ("openvino", qdq, "int8")}
    out.update({f"B: NNCF {preset} on OpenVINO": ("openvino", path, "int8") for preset, path in nncf_graphs.items()})
    return out


def run_entry(folder: Path, int8_folder: Path, calibration: np.ndarray, eval_set: tuple[np.ndarray, np.ndarray] | None,
              args: argparse.Namespace, scratch: Path) -> None:
    """Quantize ``folder``'s FP32 graph with NNCF, then print accuracy (when ``eval_set``) and speed of every variant."""
    config = read_config(folder)
    attention = [a.output for a in config.attention]
    fp32, qdq = folder / config.artifacts["onnx"].file, int8_folder / read_config(int8_folder).artifacts["onnx"].file
    graphs = {}
    for preset in args.presets.split(","):
        start = time.perf_counter()
        graphs[preset] = nncf_quantize(fp32, scratch / f"{config.name}_{preset}.xml", calibration, attention, preset)
        print(f"NNCF {preset}: {time.perf_counter() - start:.1f} s on {len(calibration)} calibration images", flush=True)
    runs = sessions(variants(fp32, qdq, graphs), args.threads)
    runtime_graph(runs)
    if eval_set is not None:
        print(f"\naccuracy, {len(eval_set[0])} held-out images, against ORT FP32:")
        accuracy(runs, *eval_set, attention)
    print(f"\nspeed, {args.threads} threads, {args.rounds} rounds of {args.seconds}s per variant:")
    speed(runs, tuple(config.input.size), [int(b) for b in args.batch_sizes.split(",")], args.rounds, args.seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=REPO / "models")
    parser.add_argument("--entry", default="shapes_classifier", help="shipped classifier: FP32 version 1, QDQ INT8 version 2")
    parser.add_argument("--zoo", default="eca_resnet50", help="zoo models for speed only (seeded weights; comma list, '' for none)")
    parser.add_argument("--data", type=Path, help="folder for the Shapes calibration/eval sets (default: a temporary one)")
    parser.add_argument("--eval-count", type=int, default=2000)
    parser.add_argument("--presets", default="performance,mixed")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from eca_serve.quantize.images import image_files, labels_of, load_inputs

    flags = cpu_flags()
    print(f"CPU: {cpu_model()}; flags: {' '.join(f for f in VECTOR_FLAGS if f in flags)}; "
          f"INT8 dot-product units (VNNI/AMX): {'yes' if flags & {'avx512_vnni', 'avx_vnni', 'amx_int8'} else 'none'}")
    with tempfile.TemporaryDirectory() as tmp:
        scratch, data = Path(tmp), args.data or Path(tmp)
        entry = read_config(args.repository / args.entry / "1")
        calibration = load_inputs(image_files(shapes(data / "calibration", 100, 1)), entry)
        eval_root = shapes(data / "eval", args.eval_count, 2)
        files = image_files(eval_root)
        print(f"\n== {args.entry} (shipped; calibration 100 Shapes seed 1, eval {len(files)} Shapes seed 2)")
        run_entry(args.repository / args.entry / "1", args.repository / args.entry / "2", calibration,
                  (load_inputs(files, entry), labels_of(files, eval_root, entry.categories)), args, scratch)
        for name in filter(None, args.zoo.split(",")):
            folder = zoo_entry(data / "zoo", name, data / "calibration")
            print(f"\n== {name} (seeded random weights: speed only, accuracy needs trained weights)")
            run_entry(folder / "1", folder / "2", load_inputs(image_files(data / "calibration"), read_config(folder / "1")),
                      None, args, scratch)
    return 0


def zoo_entry(root: Path, name: str, calibration: Path) -> Path:
    """``root/name`` with version 1 (seeded FP32 export) and 2 (``eca-serve quantize``, no accuracy bound); kept if there."""
    from quantize_bench import export_zoo, quantize

    if not (root / name / "1" / "config.json").exists():
        export_zoo(root, name)
    if not (root / name / "2" / "config.json").exists():
        quantize(root, name, calibration, 2, gates_float=True)
    return root / name


if __name__ == "__main__":
    raise SystemExit(main())
