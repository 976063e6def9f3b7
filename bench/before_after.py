"""Served throughput of this source tree against another one (e.g. an earlier commit), interleaved.

Run: ``git archive BASE | tar -x -C /tmp/base`` then ``nice python bench/before_after.py --other-source /tmp/base
[--concurrency 1,16] [--seconds 5] [--rounds 4]``. Each tree serves a copy of its own shipped models
(``models/``: an older config.json may not load in a newer tree, or the reverse), each in its own
``eca-serve serve`` process (``PYTHONPATH`` picks the tree), one
server at a time so that neither takes CPU from the other; the order flips every round. Load: multipart
JPEG uploads of the 300-640 px photo mix (``bench/serve_bench.py``'s), closed loop, to the shipped
classifier's and detector's v1 routes. Each row: req/s median [min-max] and p50 per tree, and the median of
the per-round ratios this / other, so a machine whose speed drifts shows up as spread, not as an effect.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from loadgen import LoadResult, multipart_request, run_load  # noqa: E402
from serve_bench import SMALL, photos  # noqa: E402

from tests.reliability.serverproc import ServerProcess, start_server  # noqa: E402

ROUTES = {"shapes_classifier": "classify", "shapes_detector": "detect"}


def start(tree: Path, repository: Path) -> ServerProcess:
    """``eca-serve serve`` of ``repository`` with the package imported from ``tree``."""
    return start_server(repository, {"PYTHONPATH": str(tree), "ECA_SERVE_BACKEND": "onnxruntime"}, ready_timeout_s=300)


def cell(server: ServerProcess, model: str, bodies: list[bytes], c: int, seconds: float) -> LoadResult:
    url = f"{server.base}/v1/models/{model}/{ROUTES[model]}"
    return asyncio.run(run_load(url, [multipart_request(url, b) for b in bodies], c, seconds, 1.0, server.pid))


def summary(runs: list[LoadResult]) -> str:
    rates = [r.rate for r in runs]
    p50 = [1e3 * statistics.median(r.latencies) for r in runs if r.latencies]
    latency = f"{statistics.median(p50):6.1f} ms" if p50 else "   n/a"
    return f"{statistics.median(rates):6.1f} [{min(rates):.1f}-{max(rates):.1f}] p50 {latency}"


def measure(trees: dict[str, Path], repositories: dict[str, Path], model: str, bodies: list[bytes], c: int, args: argparse.Namespace) -> str:
    runs: dict[str, list[LoadResult]] = {label: [] for label in trees}
    order = list(trees.items())
    for r in range(args.rounds):
        for label, tree in order if r % 2 == 0 else order[::-1]:
            server = start(tree, repositories[label])
            try:
                runs[label].append(cell(server, model, bodies, c, args.seconds))
            finally:
                server.stop(timeout_s=30)
    ratios = [a.rate / b.rate for a, b in zip(runs["this"], runs["other"]) if b.rate]
    spread = f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]" if ratios else "n/a"
    return f"{model} c={c:<3} this {summary(runs['this'])} | other {summary(runs['other'])} | this/other {spread}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other-source", type=Path, required=True, help="the tree to compare with (e.g. a git archive)")
    parser.add_argument("--models", default="shapes_classifier,shapes_detector")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} cores; this={REPO} other={args.other_source.resolve()}", flush=True)
    images = photos()
    bodies = [images[k] for k in SMALL]
    trees = {"this": REPO, "other": args.other_source.resolve()}
    with tempfile.TemporaryDirectory() as tmp:
        repositories = {label: Path(tmp) / label for label in trees}
        for label, tree in trees.items():
            for model in args.models.split(","):
                shutil.copytree(tree / "models" / model, repositories[label] / model)
        for model in args.models.split(","):
            for c in (int(v) for v in args.concurrency.split(",")):
                print(measure(trees, repositories, model, bodies, c, args), flush=True)


if __name__ == "__main__":
    main()
