"""Engine x precision columns of ``bench/serve_bench.py --engines``: raw and served of each, in the same rounds.

Run: ``python bench/serve_bench.py --engines --only shapes_classifier --concurrency 1,16 --rounds 2
--seconds 2`` (``--only`` names the models, here the shipped classifier: FP32 version 1 and its QDQ INT8
version 2), or ``--engines --models eca_resnet50`` (zoo models, exported with seeded weights and quantized by ``eca-serve quantize`` on
calibration crops of the bench's photos, as ``--int8`` prepares it; accuracy means nothing then).

Preparation: each model gets one version per column, a copy of its FP32 or INT8 version whose ``serving``
block names only the engine and the precision, so every column batches with the same CPU default policy:
onnxruntime fp32, onnxruntime int8, openvino fp32, openvino int8 (the QDQ graph as it is: the one INT8
artifact of both engines, see bench/int8_paths_bench.py), openvino bf16. A column the machine cannot run
is printed as "n/a" with the reason (no openvino installed; BF16 without AMX or AVX512_BF16). One server
(``--backend auto``) serves every version.

Measurement: per concurrency and round, each column in turn (reversed on odd rounds): the raw backend of
that version, built as the server builds it, at its best setting (batch 1, batch 8 or the policy's
instances side by side, chosen once while the server idles) for ``--seconds / 2``, then HTTP multipart
JPEG uploads of the 300-640 px photos at that concurrency for ``--seconds`` after ``--warmup``.
Printed per column: req/s, p50 ms, raw img/s of the same rounds, served/raw and served / ONNX Runtime FP32
served of the same round: median (min-max) over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COLUMNS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"), ("openvino", "bf16"))
SMALL = ("astronaut", "coffee", "chelsea", "rocket")
WIDTH = 24


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """serve_bench's option for the engine x precision run."""
    parser.add_argument("--engines", action="store_true", help="engine x precision columns (onnxruntime/openvino x "
                        "fp32/int8/bf16) of --models or the shipped classifier, raw and served in the same rounds; nothing else")


def missing(engine: str, precision: str) -> str | None:
    """Why this machine cannot run the column, or None."""
    from eca_serve.runtime.engines import cpu_flags, has_bf16, openvino_installed

    if engine == "openvino" and not openvino_installed():
        return "n/a: openvino not installed"
    if precision == "bf16" and not has_bf16(cpu_flags()):
        return "n/a: no AMX/AVX512_BF16"
    return None


def prepare(root: Path, models: list[str], images: dict[str, bytes]) -> dict[str, dict[tuple[str, str], int]]:
    """``root/name/N`` for every runnable column of every model; returns name -> column -> version."""
    import int8_cells

    staging = root.parent / (root.name + "_sources")
    zoo = [m for m in models if not (REPO / "models" / m / "2" / "config.json").exists()]
    if zoo:
        int8_cells.prepare(staging, zoo, images, profile=False)
    versions = {}
    for name in models:
        source = staging / name if name in zoo else REPO / "models" / name
        runnable = [c for c in COLUMNS if missing(*c) is None]
        versions[name] = {column: index for index, column in enumerate(runnable, start=1)}
        for column, version in versions[name].items():
            _write_version(source / ("2" if column[1] == "int8" else "1"), root / name / str(version), version, *column)
    return versions


def _write_version(source: Path, target: Path, version: int, engine: str, precision: str) -> None:
    """A copy of ``source`` as ``version`` whose serving block names only ``engine`` and ``precision``."""
    from eca_serve.repository import EntryConfig, read_config, write_config

    if (target / "config.json").exists():
        return
    shutil.copytree(source, target)
    data = read_config(source).model_dump(mode="json")
    data.update(version=version, serving={"engine": engine, "precision": precision})
    write_config(target, EntryConfig.model_validate(data))


def best_setting(probe: Any, seconds: float) -> str:
    """The raw setting of ``probe`` with the most img/s: batch 1, batch 8 or the CPU policy's instances."""
    from eca_serve.batching import BatchPolicy

    instances = BatchPolicy.for_device("cpu").instances
    keys = ["batch 1", "batch 8"] + ([f"{instances} instances"] if instances > 1 else [])
    rates = {}
    for key in keys:
        probe.setting(key)
        rates[key] = probe.rate(seconds)
    probe.setting(max(rates, key=rates.get))
    probe.cpu_ms.clear()
    return max(rates, key=rates.get)


def run(root: Path, versions: dict[str, dict[tuple[str, str], int]], images: dict[str, bytes],
        args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every model's cells; returns rows (model, c, column, cell_row fields, vs_ort_fp32 per round)."""
    from cell_rounds import RawProbe, cell_row
    from loadgen import multipart_request, run_load
    from tests.reliability.serverproc import start_server

    env = {"ECA_SERVE_DEVICE": "cpu", "ECA_SERVE_MODELS": json.dumps(list(versions)), "ECA_SERVE_BACKEND": "auto"}
    server = start_server(root, env, ready_timeout_s=900)
    small, rows = [images[k] for k in SMALL], []
    try:
        for name, columns in versions.items():
            probes = {c: RawProbe(root, name, "cpu", "batch 1", version=v, engine="auto") for c, v in columns.items()}
            best = {c: best_setting(p, args.seconds / 4) for c, p in probes.items()}
            print(f"{name}: raw best setting " + ", ".join(f"{' '.join(c)}: {b}" for c, b in best.items()), flush=True)
            for c in (int(v) for v in args.concurrency.split(",")):
                results: dict[tuple[str, str], list[Any]] = {col: [] for col in columns}
                raws: dict[tuple[str, str], list[float]] = {col: [] for col in columns}
                for index in range(args.rounds):
                    for column in (list(columns) if index % 2 == 0 else list(columns)[::-1]):
                        raws[column].append(probes[column].rate(args.seconds / 2))
                        url = f"{server.base}/v1/models/{name}/classify?version={columns[column]}"
                        requests = [multipart_request(url, b) for b in small]
                        results[column].append(asyncio.run(run_load(url, requests, c, args.seconds, args.warmup, server.pid)))
                        print(f"  {name} {' '.join(column)} c={c}: {results[column][-1].rate:.1f} req/s, "
                              f"raw {raws[column][-1]:.1f} img/s", flush=True)
                base = [r.rate for r in results[("onnxruntime", "fp32")]]
                for column in columns:
                    row = cell_row(name, " ".join(column), c, "300-640px", results[column], raws[column])
                    row["raw_rounds"] = raws[column]
                    row["vs_ort_fp32_rounds"] = [r.rate / b for r, b in zip(results[column], base) if b]
                    rows.append(row)
    finally:
        server.stop(timeout_s=60)
    return rows


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    return f"{median:.{digits}f}" if len(values) == 1 else f"{median:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def print_rows(rows: list[dict[str, Any]]) -> None:
    """Per model and concurrency: req/s, p50, raw, served/raw and vs ORT FP32, one column per engine x precision."""
    labels = [" ".join(c) for c in COLUMNS]
    print(f"\n{'model, c':28}{'':12}" + "".join(f"{label:>{WIDTH}}" for label in labels))
    for model in dict.fromkeys(r["model"] for r in rows):
        for c in dict.fromkeys(r["concurrency"] for r in rows if r["model"] == model):
            by_column = {r["endpoint"]: r for r in rows if r["model"] == model and r["concurrency"] == c}
            for what, value in (("req/s", lambda r: _cell(r["req_per_s_rounds"], 1)),
                                ("p50 ms", lambda r: f"{r['p50_ms']}"),
                                ("raw img/s", lambda r: _cell(r["raw_rounds"], 1)),
                                ("served/raw", lambda r: _cell(r["served_over_raw_rounds"], 2)),
                                ("vs ORT fp32", lambda r: _cell(r["vs_ort_fp32_rounds"], 2))):
                cells = [value(by_column[label]) if label in by_column else (missing(*column) or "-")
                         for label, column in zip(labels, COLUMNS)]
                print(f"{f'{model} c={c}':28}{what:12}" + "".join(f"{cell:>{WIDTH}}" for cell in cells))


def main(args: argparse.Namespace, images: dict[str, bytes]) -> None:
    """serve_bench's ``--engines`` run: prepare into ``--repository`` (or a temporary folder), measure, print (and ``--json``)."""
    import tempfile

    from eca_serve.runtime.engines import cpu_flags, cpu_model

    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    print(f"CPU: {cpu_model()}; flags: {' '.join(flags) or 'none'}", flush=True)
    models = [m for m in (args.only or args.models).split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.repository or Path(tmp) / "models"
        versions = prepare(root, list(dict.fromkeys(models)), images)
        rows = run(root, versions, images, args)
    print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
