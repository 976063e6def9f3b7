"""The in-process decode + infer limit of the machine: what a server could reach with zero overhead.

As many threads as the model's instances (``BatchPolicy.for_device``), each with the backend built as
the server builds it (cores split between instances), loop over the JPEG mix: decode + preprocess
(``reference`` or ``fast``) + a batch-1 inference. Their summed images/s is the ceiling a served rate
is divided by (``served / limit``).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def inprocess_limit(folder: Path, images: list[bytes], seconds: float, device: str = "cpu",
                    preprocessing: str = "reference") -> float:
    """Images/s of decode + preprocess + batch-1 inference on all instances at once, for ``seconds``."""
    from eca_serve.batching import BatchPolicy
    from eca_serve.pipelines.images import DecodeLimits, decode_image
    from eca_serve.pipelines.manager import backend_options_for
    from eca_serve.pipelines.preprocess import decode_target, preprocess_classification
    from eca_serve.pipelines.preprocess_fast import preprocess_classification_fast
    from eca_serve.repository import read_config
    from eca_serve.runtime import BackendOptions, create_backend, warm_up

    config = read_config(folder)
    policy = BatchPolicy.for_device(device)
    backend = create_backend(folder, config, backend_options_for(BackendOptions("onnxruntime", device), policy))
    warm_up(backend, config)
    prep = preprocess_classification_fast if preprocessing == "fast" else preprocess_classification
    target, limits, spec = decode_target(config.input), DecodeLimits(), config.input
    barrier = threading.Barrier(policy.instances)

    def run(offset: int) -> int:
        barrier.wait()
        count, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            decoded = decode_image(images[(offset + count) % len(images)], limits=limits, target=target)
            backend.infer(prep(decoded, spec)[None])
            count += 1
        return count

    with ThreadPoolExecutor(policy.instances) as pool:
        counts = list(pool.map(run, range(policy.instances)))
    return sum(counts) / seconds
