"""gRPC benchmark: tritonclient.grpc against ``eca-serve serve`` at concurrency 1, 4 and 16.

Run: ``python bench/grpc_bench.py [--seconds 5] [--model shapes_classifier] [--address host:port]``.

Without ``--address`` it starts ``eca-serve serve`` on the shipped models (a separate process, gRPC on a
free port). Per input kind, one image per request: ``jpeg`` sends examples/cat.jpg as an encoded BYTES
``image``; ``tensor`` sends the same photo pre-decoded and preprocessed as the FP32 ``input`` the model's
config declares. Each cell runs ``--seconds`` after a warm-up of the same load, with one client (and one
channel) per caller thread, and prints requests/s, p50 and p99 latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tritonclient.grpc as grpcclient  # noqa: E402

from tests.serving_utils import free_port  # noqa: E402

PHOTO = REPO / "examples" / "cat.jpg"


@dataclass(frozen=True)
class Cell:
    """One measured load: requests/s and latency percentiles in milliseconds."""

    kind: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def inputs(kind: str, model: str, repository: Path = REPO / "models") -> list[grpcclient.InferInput]:
    """One request's inputs: the photo encoded, or as the preprocessed tensor the server would make."""
    data = PHOTO.read_bytes()
    if kind == "jpeg":
        item = grpcclient.InferInput("image", [1], "BYTES")
        item.set_data_from_numpy(np.array([data], dtype=object))
        return [item]
    from eca_serve.pipelines.images import DecodeLimits, decode_image
    from eca_serve.pipelines.preprocess import decode_target, preprocess_classification
    from eca_serve.repository import read_config

    config = read_config(repository / model / "1")
    row = preprocess_classification(decode_image(data, limits=DecodeLimits(), target=decode_target(config.input)), config.input)
    item = grpcclient.InferInput("input", [1, *row.shape], "FP32")
    item.set_data_from_numpy(row[None].astype(np.float32))
    return [item]


def run_cell(address: str, model: str, kind: str, concurrency: int, seconds: float, warmup_s: float,
             repository: Path = REPO / "models") -> Cell:
    """``concurrency`` threads sending back to back; only calls started after the warm-up count."""
    request = inputs(kind, model, repository)
    outputs = [grpcclient.InferRequestedOutput("logits")]
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def caller() -> None:
        client = grpcclient.InferenceServerClient(address)
        while (began := time.perf_counter()) < stop_at:
            try:
                client.infer(model, request, outputs=outputs)
            except grpcclient.InferenceServerException:
                with lock:
                    errors[0] += 1
                continue
            if began >= measure_from:
                with lock:
                    latencies.append(time.perf_counter() - began)
        client.close()

    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ms = sorted(1000 * s for s in latencies) or [float("nan")]
    return Cell(kind, concurrency, len(latencies) / seconds, statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))], errors[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--model", default="shapes_classifier")
    parser.add_argument("--address", help="an eca-serve gRPC address (default: start one on the shipped models)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--repository", type=Path, default=REPO / "models", help="where --model's config.json is (tensor inputs)")
    args = parser.parse_args()
    with ExitStack() as stack:
        address = args.address or stack.enter_context(_server())
        print(f"{'input':8} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            for kind in ("jpeg", "tensor"):  # alternating, so both kinds see the same machine state
                cell = run_cell(address, args.model, kind, concurrency, args.seconds, args.warmup, args.repository)
                print(f"{cell.kind:8} {cell.concurrency:>4} {cell.rps:>8.1f} {cell.p50_ms:>8.2f} {cell.p99_ms:>8.2f} {cell.errors:>6}",
                      flush=True)


@contextmanager
def _server() -> Iterator[str]:
    """``eca-serve serve`` on the shipped models with gRPC on a free port; yields its address."""
    from tests.reliability.serverproc import start_server

    port = free_port()
    process = start_server(REPO / "models", env={"ECA_SERVE_GRPC_PORT": str(port)})
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


if __name__ == "__main__":
    main()
