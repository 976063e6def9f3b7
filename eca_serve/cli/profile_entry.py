"""``eca-serve profile NAME[:VERSION] --recommend``: measure a repository entry as the server runs it.

The entry's backend is built exactly as the model manager builds it for each engine and precision
(ONNX Runtime first, the baseline; OpenVINO where installed, BF16 where the CPU computes it; see
`eca_serve.cli.profile_engines`) and each instance count (cores shared out between instances, a
load-aware session on CPU), then every instance runs batches back to back in its own thread. The result is a table and a recommended ``serving`` block for
config.json, which ``--write`` stores there: measured once, on purpose, instead of at every start-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eca_serve.cli._output import print_json, print_table
from eca_serve.errors import ConfigError, UnknownModelError
from eca_serve.kinds import Device
from eca_serve.repository import CONFIG_FILE, EntryConfig, ServingSpec, list_entries, read_config

MODEL_BOUND_S = 0.020  # a single run slower than this: batching on CPU only widens latency ...
BATCH_GAIN = 1.25  # ... unless batches measure this much more throughput (INT8: 1.4-1.7x at batch 8)
WITHIN = 0.05  # throughputs this close to the best count as equal (runs on a VM vary about as much)


@dataclass(frozen=True)
class Cell:
    """One measured setting: ``instances`` threads each running batches of ``batch_size`` back to back.

    Attributes:
        instances: Concurrent batches (threads), as the batcher's ``instances``.
        batch_size: Images per backend call.
        images_per_s: Images of all instances together per second (median over rounds).
        latency_ms: Median time of one backend call (what every image of a batch waits).
        low, high: Smallest and largest images/s over the rounds (equal to ``images_per_s`` for one).
        engine, precision: What ran it (`eca_serve.runtime.engines`).
    """

    instances: int
    batch_size: int
    images_per_s: float
    latency_ms: float
    low: float | None = None
    high: float | None = None
    engine: str = "onnxruntime"
    precision: str = "fp32"


def recommend(cells: list[Cell], device: Device | str) -> ServingSpec:
    """The serving block for measured ``cells``.

    Rule: the smallest batch size whose throughput is within `WITHIN` (5%) of the best measured,
    with the instance count that is fastest at that batch size. On CPU, a model-bound model (its
    fastest single-image run takes over `MODEL_BOUND_S`, 20 ms) gets batch size 1 whatever the
    throughputs say within `BATCH_GAIN` (1.25x) of batch 1: an FP32 batch's cost there is flat per
    image, so batching brings no throughput and only makes the images of a batch wait for each other
    (measured for ECA-ResNet-50 at 4 clients: p99/p50 1.75 with batches of 4, 1.25 with batches of 1,
    same throughput). INT8 graphs do gain from batches (ONNX Runtime's int8 kernels: ECA-ResNet-50
    1.38x, ECA-MobileNetV2 1.65x from batch 1 to 8, issue #16), so a larger gain keeps the batch.

    Raises:
        ConfigError: No cells.
    """
    if not cells:
        raise ConfigError("nothing was measured")
    engine, precision = best_variant(cells)
    cells = [c for c in cells if (c.engine, c.precision) == (engine, precision)]
    kind = Device(device).kind
    best = max(c.images_per_s for c in cells)
    good = [c for c in cells if c.images_per_s >= (1 - WITHIN) * best]
    single = [c.latency_ms / 1e3 for c in cells if c.batch_size == 1]
    size = min(c.batch_size for c in good)
    batch_one = max((c.images_per_s for c in cells if c.batch_size == 1), default=0.0)
    if kind == "cpu" and single and min(single) > MODEL_BOUND_S and best < BATCH_GAIN * batch_one:
        size = 1
    choice = max((c for c in cells if c.batch_size == size), key=lambda c: c.images_per_s)
    return ServingSpec(device=kind, max_batch_size=choice.batch_size, instances=choice.instances, engine=engine,
                       precision=precision)


def best_variant(cells: list[Cell]) -> tuple[str, str]:
    """The (engine, precision) with the best throughput; the first measured one (the baseline,
    ONNX Runtime at the entry's own precision) unless another beats it by more than `WITHIN`, so
    run-to-run noise never switches an engine."""
    order = list(dict.fromkeys((c.engine, c.precision) for c in cells))
    best = {v: max(c.images_per_s for c in cells if (c.engine, c.precision) == v) for v in order}
    winner = max(order, key=lambda v: best[v])
    return winner if best[winner] > (1 + WITHIN) * best[order[0]] else order[0]


def measure_entry(folder: Path, config: EntryConfig, device: str, batch_sizes: list[int],
                  instance_counts: list[int], seconds: float, rounds: int = 1,
                  variants: list[tuple[str, str]] | None = None) -> list[Cell]:
    """Every (engine and precision, instance count, batch size) cell, on the backend the server would build.

    With ``rounds`` > 1 every cell is measured once per round, cells interleaved within a round (a
    VM's speed drifts over seconds: back-to-back cells would compare phases, not settings); a cell
    reports the median round and the spread. ``variants``: (engine, precision) pairs, the baseline
    first (default: ONNX Runtime at the entry's precision only).
    """
    import dataclasses

    from eca_serve.batching import BatchPolicy
    from eca_serve.pipelines.manager import backend_options_for
    from eca_serve.runtime import BackendOptions, create_backend, warm_up

    variants = variants or [("onnxruntime", config.precision)]
    backends = {}
    for engine, precision in variants:
        for instances in instance_counts:
            policy = BatchPolicy.for_device(device, instances=instances)
            options = backend_options_for(BackendOptions(engine, device, precision=precision), policy)
            backend = backends[(engine, precision, instances)] = create_backend(folder, config, options)
            warm_up(backend, config, batch_sizes=tuple(batch_sizes) if config.task == "classification" else (1,))
    settings = [(v, instances, size) for v in variants for instances in instance_counts for size in batch_sizes]
    runs: dict[Any, list[Cell]] = {s: [] for s in settings}
    for _ in range(max(1, rounds)):
        for (engine, precision), instances, size in settings:
            cell = _measure_cell(backends[(engine, precision, instances)], config, instances, size, seconds)
            runs[((engine, precision), instances, size)].append(dataclasses.replace(cell, engine=engine, precision=precision))
    return [_median_cell(runs[s]) for s in settings]


def _median_cell(runs: list[Cell]) -> Cell:
    rates = [c.images_per_s for c in runs]
    return Cell(runs[0].instances, runs[0].batch_size, round(statistics.median(rates), 1),
                round(statistics.median(c.latency_ms for c in runs), 2), min(rates), max(rates), runs[0].engine,
                runs[0].precision)


def _measure_cell(backend: Any, config: EntryConfig, instances: int, batch_size: int, seconds: float) -> Cell:
    """``instances`` threads call the backend on batches of ``batch_size`` for ``seconds`` (at least twice each)."""
    h, w = config.warmup_size()
    batch = np.random.default_rng(0).random((batch_size, 3, h, w), dtype=np.float32)
    inputs: Any = batch if config.task == "classification" else list(batch)
    start = threading.Barrier(instances)
    times: list[list[float]] = [[] for _ in range(instances)]

    def loop(mine: list[float]) -> None:
        start.wait()
        deadline = time.perf_counter() + seconds
        while len(mine) < 2 or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            backend.infer(inputs)
            mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=loop, args=(mine,)) for mine in times]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    calls = [t for mine in times for t in mine]
    return Cell(instances, batch_size, round(len(calls) * batch_size / wall, 1), round(1e3 * statistics.median(calls), 2))


def find_entry(repository: Path, spec: str) -> Path:
    """Folder of ``NAME`` (newest version) or ``NAME:VERSION`` in the repository."""
    name, _, version = spec.partition(":")
    if version and not version.isdigit():
        raise ConfigError(f"entry {spec!r}: the version after ':' must be a number")
    entries = [(v, folder) for n, v, folder in list_entries(repository) if n == name]
    if version:
        entries = [(v, folder) for v, folder in entries if v == int(version)]
    if not entries:
        raise UnknownModelError(f"no entry {spec!r} in the model repository {repository}")
    return max(entries)[1]


def write_serving(folder: Path, spec: ServingSpec) -> Path:
    """Store ``spec`` as the ``serving`` block of ``folder/config.json``; every other field stays as it is.

    Fields of an existing block for the same device (or for every device) that ``spec`` leaves unset
    are kept. config.json holds the sha256 of the artifacts, not its own, so it may be rewritten.
    """
    path = folder / CONFIG_FILE
    raw = json.loads(path.read_text())
    old = raw.get("serving") or {}
    kept = old if old.get("device") in (None, spec.device) else {}
    raw["serving"] = {**kept, **spec.model_dump(exclude_none=True)}
    EntryConfig.model_validate(raw)  # never write a config the server would refuse
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    tmp.replace(path)
    return path


def cmd_profile_entry(args: argparse.Namespace) -> int:
    """Measure, print the table and the recommended block, and with ``--write`` store it."""
    folder = find_entry(args.model_repository, args.name)
    config = read_config(folder)
    from eca_serve.cli.profile_engines import engine_variants, write_reports

    variants = engine_variants(config, args.device, getattr(args, "engines", "auto"))
    cells = measure_entry(folder, config, args.device, _ints(args.batch_sizes), _ints(args.instance_counts), args.seconds,
                          args.rounds, variants)
    block = recommend(cells, args.device)
    written = str(write_serving(folder, block)) if args.write else None
    if written:
        write_reports(folder, config, block)
    entry = f"{config.name}/{config.version}"
    if args.json:
        print_json({"entry": entry, "device": args.device, "cells": [asdict(c) for c in cells],
                    "recommended": block.model_dump(exclude_none=True), "written": written})
        return 0
    chosen = (block.engine, block.precision, block.instances, block.max_batch_size)
    rows = [(c.engine, c.precision, c.instances, c.batch_size, c.images_per_s, f"{c.low}-{c.high}", c.latency_ms,
             "<-" if (c.engine, c.precision, c.instances, c.batch_size) == chosen else "") for c in cells]
    print_table(f"profile {entry} on {args.device} (as served, interleaved rounds)",
                ["engine", "precision", "instances", "batch size", "img/s (median)", "min-max", "ms per batch (p50)",
                 "recommended"], rows)
    print(json.dumps({"serving": block.model_dump(exclude_none=True)}, indent=2))
    print(f"written to {written}" if written else "not written (add --write to store it in config.json)")
    return 0


def _ints(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise ConfigError(f"expected integers >= 1, got {text!r}")
    return values
