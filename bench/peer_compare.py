"""eca-serve against the plain FastAPI + ORT peer on the same ONNX, interleaved, next to the in-process limit.

Run: ``nice python bench/peer_compare.py [--models eca_mobilenet_v2] [--concurrency 1,16,64] [--seconds 4]
[--rounds 2]``. Exports the zoo classifiers with ``torch.manual_seed(0)`` and copies the shipped Shapes
classifier into a temporary repository, starts eca-serve (``--preprocessing``) and, per model,
``bench/peers/plain_ort_server.py`` on the same ONNX file; then at each concurrency the two servers are
loaded in turn (the order flips every round) with multipart JPEG uploads of the 300-640 px photo mix.
Each row: req/s and p50 ms per round for both, eca-serve / peer, and eca-serve / the in-process decode +
infer limit of all instances (``bench/inprocess_limit.py``, measured once per model before the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from inprocess_limit import inprocess_limit  # noqa: E402
from loadgen import LoadResult, multipart_request, run_load  # noqa: E402
from serve_bench import SMALL, photos  # noqa: E402

from tests.reliability.serverproc import ServerProcess, start_server, wait_ready  # noqa: E402
from tests.serving_utils import free_port  # noqa: E402


def build(root: Path, models: list[str]) -> list[str]:
    import torch

    from eca_serve import create_model
    from eca_serve.export import ExportOptions, export_model

    for name in models:
        torch.manual_seed(0)
        export_model(create_model(name), root / name / "1", ExportOptions(name=name, formats=("onnx",)))
    shutil.copytree(REPO / "models" / "shapes_classifier", root / "shapes_classifier")
    return [*models, "shapes_classifier"]


def start_peer(entry: Path) -> ServerProcess:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="peer-", suffix=".log")[1])
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, str(REPO / "bench" / "peers" / "plain_ort_server.py"), "--entry", str(entry),
                                    "--port", str(port)], stdout=sink, stderr=subprocess.STDOUT, env=dict(os.environ))
    return wait_ready(ServerProcess(process, f"http://127.0.0.1:{port}", log), 120)


def cell(base: str, name: str, bodies: list[bytes], c: int, seconds: float, warmup: float, pid: int) -> LoadResult:
    url = f"{base}/v1/models/{name}/classify"
    return asyncio.run(run_load(url, [multipart_request(url, b) for b in bodies], c, seconds, warmup, pid))


def summary(runs: list[LoadResult]) -> str:
    rates = [r.rate for r in runs]
    p50 = [1e3 * statistics.median(r.latencies) for r in runs if r.latencies]
    latency = f"{statistics.median(p50):5.1f} ms" if p50 else "  n/a (no answer in the window)"
    return f"{statistics.median(rates):6.1f} [{min(rates):.1f}-{max(rates):.1f}] p50 {latency}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="eca_mobilenet_v2", help="zoo classifiers to export (the shipped Shapes one is added)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--preprocessing", default="fast", choices=("fast", "reference"))
    args = parser.parse_args()
    images = photos()
    bodies = [images[k] for k in SMALL]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        served = build(root, [m for m in args.models.split(",") if m])
        env = {"ECA_SERVE_MODELS": json.dumps(served), "ECA_SERVE_PREPROCESSING": args.preprocessing}
        ours = start_server(root, env, ready_timeout_s=600)
        try:
            for name in served:
                limit = inprocess_limit(root / name / "1", bodies, args.seconds, preprocessing=args.preprocessing)
                print(f"{name}: in-process decode+infer limit {limit:.1f} img/s", flush=True)
                peer = start_peer(root / name / "1")
                try:
                    for c in (int(v) for v in args.concurrency.split(",")):
                        runs: dict[str, list[LoadResult]] = {"eca-serve": [], "peer": []}
                        servers = [("eca-serve", ours), ("peer", peer)]
                        for r in range(args.rounds):
                            for label, server in servers if r % 2 == 0 else servers[::-1]:
                                runs[label].append(cell(server.base, name, bodies, c, args.seconds, args.warmup, server.pid))
                        pairs = [a.rate / b.rate for a, b in zip(runs["eca-serve"], runs["peer"]) if b.rate]
                        ratio = statistics.median(pairs) if pairs else float("nan")
                        served_rate = statistics.median(r.rate for r in runs["eca-serve"])
                        print(f"  c={c:<3} eca-serve {summary(runs['eca-serve'])} | peer {summary(runs['peer'])} | "
                              f"eca/peer {ratio:.2f} | eca/limit {served_rate / limit:.2f}", flush=True)
                finally:
                    peer.stop(timeout_s=10)
        finally:
            ours.stop(timeout_s=60)


if __name__ == "__main__":
    main()
