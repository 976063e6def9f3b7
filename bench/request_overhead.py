"""Server CPU per request outside decode + inference: the real app in-process, lone classify requests.

Run: ``nice python bench/request_overhead.py [--requests 300] [--rounds 3] [--other-source DIR]``.
The app (``create_app``, every middleware, the real batcher and ONNX Runtime) answers multipart JPEG
uploads from httpx's ASGI transport at concurrency 1; the process's CPU per request (all threads) minus
the CPU of the same decode + preprocess + inference called directly is the request handling cost
(routing, dependencies, multipart, thread hand-offs, batcher, JSON, metrics, logging), plus httpx's
client side, which is the same for every source measured. With ``--other-source`` (e.g. a ``git archive``
of main) the rounds alternate between that source tree and this one, each in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = r'''
import asyncio, io, json, sys, time
from pathlib import Path
import httpx
from PIL import Image
from skimage import data
from eca_serve.api.app import create_app
from eca_serve.pipelines.images import DecodeLimits, decode_image
from eca_serve.pipelines.preprocess import decode_target, preprocess_classification
from eca_serve.repository import read_config
from eca_serve.runtime import BackendOptions, create_backend
from eca_serve.settings import Settings

repository, n = Path(sys.argv[1]), int(sys.argv[2])
buffer = io.BytesIO(); Image.fromarray(data.coffee()).save(buffer, "JPEG", quality=90); jpeg = buffer.getvalue()
folder = repository / "shapes_classifier" / "1"
config = read_config(folder)
backend = create_backend(folder, config, BackendOptions("onnxruntime", "cpu", threads=1))
def direct():
    x = preprocess_classification(decode_image(jpeg, limits=DecodeLimits(), target=decode_target(config.input)), config.input)
    backend.infer(x[None])
for _ in range(20): direct()
cpu = time.process_time()
for _ in range(n): direct()
direct_ms = 1e3 * (time.process_time() - cpu) / n

async def main():
    app = create_app(Settings(model_repository=repository, models=["shapes_classifier"], log_level="warning", grpc_port=0, drift_window=0))
    async with app.router.lifespan_context(app):
        await app.state.dataplane.loaded()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            url = "/v1/models/shapes_classifier/classify"
            for _ in range(30):
                assert (await c.post(url, files={"file": ("c.jpg", jpeg, "image/jpeg")})).status_code == 200
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(n):
                await c.post(url, files={"file": ("c.jpg", jpeg, "image/jpeg")})
            return 1e3 * (time.process_time() - cpu) / n, 1e3 * (time.perf_counter() - wall) / n
served_ms, wall_ms = asyncio.run(main())
print(json.dumps({"direct_ms": direct_ms, "served_ms": served_ms, "wall_ms": wall_ms}))
'''


def measure(source: Path, requests: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(source)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(REPO / "models"), str(requests)], env=env, cwd=source,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--other-source", type=Path, help="another source tree to alternate with (e.g. main)")
    args = parser.parse_args()
    sources = {"this": REPO, **({"other": args.other_source} if args.other_source else {})}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in sources}
    for r in range(args.rounds):
        for label in list(sources) if r % 2 == 0 else list(sources)[::-1]:
            runs[label].append(measure(sources[label], args.requests))
    for label, values in runs.items():
        over = [v["served_ms"] - v["direct_ms"] for v in values]
        print(f"{label:<6} CPU ms/request: served {statistics.median(v['served_ms'] for v in values):.2f}, direct decode+infer "
              f"{statistics.median(v['direct_ms'] for v in values):.2f}, overhead {statistics.median(over):.2f} "
              f"[{min(over):.2f}-{max(over):.2f}]; wall {statistics.median(v['wall_ms'] for v in values):.2f} ms")


if __name__ == "__main__":
    main()
