"""Engines side by side, in one process: OpenVINO / ONNX Runtime ratios per entry, precision and batch size.

Run: ``nice python bench/engine_bench.py [--repository models] [--entries shapes_classifier:1,shapes_detector:1]
[--batch-sizes 1,8] [--rounds 5] [--seconds 1] [--threads 2]``.

For every entry it builds the ONNX Runtime backend (the baseline, at the entry's own precision: FP32 or
its QDQ INT8 graph) and OpenVINO at the same precision, plus OpenVINO BF16 where the CPU computes it (AMX
or AVX512_BF16), all as the server builds them with ``--threads`` intra-op threads. Windows of
``--seconds`` alternate between the variants, ``--rounds`` times, so a VM's drift hits all of them alike.
Printed per cell: img/s (median of rounds) and the ratio to ONNX Runtime of the same round (median, min-max).
The CPU model and its vector flags head the table: name them next to any number quoted from it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eca_serve.repository import read_config  # noqa: E402
from eca_serve.runtime import BackendOptions, create_backend, warm_up  # noqa: E402
from eca_serve.runtime.engines import cpu_flags, cpu_model, has_bf16  # noqa: E402

VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def variants(precision: str) -> list[tuple[str, str]]:
    out = [("onnxruntime", precision), ("openvino", precision)]
    if precision == "fp32" and has_bf16(cpu_flags()):
        out.append(("openvino", "bf16"))
    return out


def window(backend, inputs, seconds: float) -> float:
    """Images per second of back-to-back calls for ``seconds`` (at least 3 calls)."""
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        backend.infer(inputs)
        n += 1
    count = len(inputs)
    return n * count / (time.perf_counter() - start)


def bench_entry(folder: Path, batch_sizes: list[int], rounds: int, seconds: float, threads: int) -> list[tuple]:
    config = read_config(folder)
    classifier = config.task == "classification"
    h, w = config.input.size or tuple((config.detection or {}).get("warmup_size", (320, 320)))
    rows = []
    backends = {v: create_backend(folder, config, BackendOptions(v[0], "cpu", threads=threads, precision=v[1]))
                for v in variants(config.precision)}
    for backend in backends.values():
        warm_up(backend, config, batch_sizes=tuple(batch_sizes) if classifier else (1,))
    for size in batch_sizes if classifier else [1]:
        x = np.random.default_rng(0).random((size, 3, h, w), dtype=np.float32)
        inputs = x if classifier else list(x)
        rates: dict[tuple[str, str], list[float]] = {v: [] for v in backends}
        for _ in range(rounds):
            for v, backend in backends.items():
                rates[v].append(window(backend, inputs, seconds))
        base = rates[next(iter(backends))]
        for v in backends:
            ratios = [r / b for r, b in zip(rates[v], base)]
            rows.append((f"{config.name}:{config.version}", *v, size, statistics.median(rates[v]),
                         statistics.median(ratios), min(ratios), max(ratios)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--entries", default="shapes_classifier:1,shapes_classifier:2,shapes_detector:1")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    flags = cpu_flags()
    print(f"CPU: {cpu_model()}; flags: {' '.join(f for f in VECTOR_FLAGS if f in flags) or 'none of ' + ','.join(VECTOR_FLAGS)}")
    print(f"{args.threads} threads, {args.rounds} interleaved rounds of {args.seconds}s per variant")
    print(f"{'entry':24} {'engine':12} {'prec':5} {'batch':>5} {'img/s':>9} {'vs ORT':>7} {'min-max':>11}")
    for spec in args.entries.split(","):
        name, _, version = spec.partition(":")
        for row in bench_entry(args.repository / name / (version or "1"), [int(b) for b in args.batch_sizes.split(",")],
                               args.rounds, args.seconds, args.threads):
            entry, engine, precision, size, rate, ratio, low, high = row
            print(f"{entry:24} {engine:12} {precision:5} {size:5d} {rate:9.1f} {ratio:6.2f}x {low:5.2f}-{high:4.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
