"""Cells measured in interleaved rounds, the raw backend measured in each round, and the rows they give.

The VM's speed drifts in phases of seconds, so cells compared with each other are measured back to
back, round after round (odd rounds in reverse order, so no cell always follows the same one), and
each served/raw ratio divides a cell's rate by the raw backend's rate of the same round. A row
reports the median over rounds and the spread (min-max).
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from loadgen import LoadResult

Measure = Callable[[], LoadResult]


class RawProbe:
    """The backend of one model built as the server builds it, to re-measure its best setting each round.

    Args:
        best: The best key of ``serve_bench.raw_backend`` (``"batch N"`` or ``"N instances"``).
        version: The version folder to build.
        engine: ``onnxruntime``, ``openvino`` or ``auto`` (the version's serving block, else the rule),
            resolved with its precision as the server resolves them (`entry_options`).
    """

    def __init__(self, root: Path, name: str, device: str, best: str, version: int = 1, engine: str = "onnxruntime") -> None:
        from eca_serve.batching import BatchPolicy
        from eca_serve.pipelines.manager import backend_options_for
        from eca_serve.repository import read_config
        from eca_serve.runtime import BackendOptions, create_backend, warm_up
        from eca_serve.runtime.engines import entry_options

        folder = root / name / str(version)
        self.config = read_config(folder)
        policy = BatchPolicy.for_device(device)
        options = entry_options(backend_options_for(BackendOptions(engine, device), policy), self.config)
        self.backend = create_backend(folder, self.config, options)
        warm_up(self.backend, self.config)
        self.setting(best)
        self.cpu_ms: list[float] = []  # CPU milliseconds per image of each `rate` call

    def setting(self, best: str) -> None:
        """Measure ``best`` (``"batch N"``: one caller, batches of N; ``"N instances"``: N callers, batches of 1) from now on."""
        count, kind = best.split(" ")[::-1] if best.startswith("batch") else best.split(" ")
        self.callers, self.batch = (int(count), 1) if kind == "instances" else (1, int(count))

    def rate(self, seconds: float) -> float:
        """Images/s of ``callers`` threads each running batches of ``batch`` back to back for ``seconds``;
        appends the CPU milliseconds per image to ``cpu_ms``."""
        batch = self.batch if self.config.task == "classification" else 1
        rng = np.random.default_rng(0)
        if self.config.task == "classification":
            x = rng.standard_normal((batch, 3, *self.config.input.size), dtype=np.float32)
            call: Callable[[], object] = lambda: self.backend.infer(x)
        else:
            side = self.config.detection["min_size"]
            images = [rng.random((3, side, side), dtype=np.float32)]
            call = lambda: self.backend.infer(images)
        barrier = threading.Barrier(self.callers)

        def run(_: int) -> tuple[int, float]:
            barrier.wait()
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                call()
                count += 1
            return count, count / (time.perf_counter() - start)

        cpu = time.process_time()
        with ThreadPoolExecutor(self.callers) as pool:
            runs = list(pool.map(run, range(self.callers)))
        self.cpu_ms.append(1e3 * (time.process_time() - cpu) / max(1, batch * sum(n for n, _ in runs)))
        return batch * sum(rate for _, rate in runs)


def interleaved(cells: dict[str, Measure], rounds: int, raw: Callable[[], float] | None = None,
                report: Callable[[str, LoadResult], None] | None = None) -> tuple[dict[str, list[LoadResult]], list[float]]:
    """Each cell measured once per round; with ``raw``, the raw rate measured at the start of each round.

    Returns:
        The results of each cell in round order, and the raw rate of each round (empty without ``raw``).
    """
    results: dict[str, list[LoadResult]] = {label: [] for label in cells}
    raws: list[float] = []
    for index in range(rounds):
        if raw is not None:
            raws.append(raw())
        for label in (list(cells) if index % 2 == 0 else list(cells)[::-1]):
            result = cells[label]()
            results[label].append(result)
            if report is not None:
                report(label, result)
    return results, raws


def cell_row(model: str, endpoint: str, c: int, photos: str, results: list[LoadResult], raws: list[float],
             raw_cpu_ms: float | None = None) -> dict[str, Any]:
    """One table row: median and spread of requests/s over rounds, latency over all rounds, served/raw
    per round (each round's rate over that round's raw rate; one raw rate for every round if one is given).

    With ``raw_cpu_ms`` (the backend's CPU milliseconds per image), ``cpu_ratio`` is that over the CPU
    milliseconds a request costs the server and the client together: the served/raw that a machine
    with nothing else running would reach once every core is busy (the wall-clock ratio also moves
    with what other processes take from the cores).
    """
    rates = [r.rate for r in results]
    raws = raws if len(raws) == len(results) else raws[:1] * len(results)
    ratios = [rate / raw for rate, raw in zip(rates, raws) if raw]
    lat_ms = sorted(1e3 * v for r in results for v in r.latencies)
    answered = max(1, len(lat_ms))
    window_s = sum(r.seconds for r in results) or 1.0
    statuses: dict[Any, int] = {}
    for r in results:
        for key, n in r.statuses.items():
            statuses[key] = statuses.get(key, 0) + n
    errors: dict[str, int] = {}
    for r in results:
        for key, n in r.errors.items():
            errors[key] = errors.get(key, 0) + n
    return {"model": model, "endpoint": endpoint, "concurrency": c, "photos": photos,
            "req_per_s": round(statistics.median(rates), 1), "req_per_s_rounds": [round(v, 1) for v in rates],
            "p50_ms": round(statistics.median(lat_ms), 1) if lat_ms else None,
            "p99_ms": round(lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))], 1) if lat_ms else None,
            "raw_img_per_s": round(statistics.median(raws), 1) if raws else None,
            "served_over_raw": round(statistics.median(ratios), 2) if ratios else None,
            "served_over_raw_rounds": [round(v, 3) for v in ratios], "statuses": statuses,
            "client_cpu_ms_per_req": round(1e3 * sum(r.client_cpu_s for r in results) / answered, 2),
            "client_cores": round(sum(r.client_cpu_s for r in results) / window_s, 2),
            "server_cpu_ms_per_req": round(1e3 * sum(r.server_cpu_s for r in results) / answered, 2),
            "raw_cpu_ms_per_img": round(raw_cpu_ms, 2) if raw_cpu_ms else None,
            "cpu_ratio": round(raw_cpu_ms / (1e3 * sum(r.server_cpu_s + r.client_cpu_s for r in results) / answered), 2)
            if raw_cpu_ms and lat_ms else None,
            "transport_errors": errors}


def spread(values: list[float], digits: int = 0) -> str:
    """``min-max`` of ``values`` (one value alone when there is one round)."""
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if len(values) == 1 else f"{low:.{digits}f}-{high:.{digits}f}"
