"""ECA next to the related channel-attention families, measured on this machine in one run.

    python bench/families_bench.py [--rounds 3] [--window-s 2] [--input-size 224]

Per model: parameters, multiply-adds at the input size (torch's FLOP counter / 2, in 2^30 units as the
zoo table), and ONNX Runtime images/s at batch 1 and 8 on the exported graph as it is served (logits
plus every attention output). Speed is measured in short windows that alternate between models and
batch sizes, round after round, and the median window is reported: the CPU is shared with other
work, so only interleaved windows compare, and absolute numbers are those of a busy machine.

Weights are seeded random (speed does not depend on them); DGC heads drop their final share of input
channels (gate factor 0.25), as after the authors' schedule. DGC's FLOPs are those of the dense
computation we run (masked channels are multiplied by zero, not skipped).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import eca_serve  # noqa: E402
from eca_serve.export.formats import export_classifier_onnx  # noqa: E402
from eca_serve.layers import DynamicMultiHeadConv  # noqa: E402
from eca_serve.models.dgc import set_inactive_channels  # noqa: E402
from eca_serve.models.profile import measure  # noqa: E402

MODELS = {
    "ECA-ResNet-50": "eca_resnet50",
    "SE-ResNet-50": "se_resnet50",
    "ResNeSt-50": "resnest50",
    "ResNet-50": "resnet50",
    "DGC-ResNet-18": "dgc_resnet18",
    "ResNet-18": "resnet18",
}
BATCHES = (1, 8)


def build(name: str) -> torch.nn.Module:
    """Seeded random model in eval mode; DGC at its final gating with saliency near 1 (no overflow)."""
    torch.manual_seed(0)
    model = eca_serve.create_model(name)
    if model.config.attention == "dgc":
        set_inactive_channels(model, 1.0)
        for m in model.modules():
            if isinstance(m, DynamicMultiHeadConv):
                for head in m.heads:
                    head.fc2.weight.data.mul_(0.01)
                    head.fc2.bias.data = 0.5 + torch.rand(head.fc2.bias.shape)
    return model.eval()


def session(model: torch.nn.Module, folder: Path, size: int):
    import onnxruntime as ort

    path = folder / f"{model.config.name}.onnx"
    export_classifier_onnx(model, path, torch.randn(1, 3, size, size))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def window(sess, batch: np.ndarray, seconds: float) -> float:
    """Images/s of back-to-back runs over about ``seconds`` (at least one run after a warm-up run)."""
    sess.run(None, {"input": batch})
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < seconds:
        sess.run(None, {"input": batch})
        runs += 1
    return runs * len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args()
    size = args.input_size
    costs, sessions = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, name in MODELS.items():
            model = build(name)
            costs[label] = measure(model, (size, size))
            sessions[label] = session(model, Path(tmp), size)
            print(f"exported {label}", file=sys.stderr)
        rng = np.random.default_rng(0)
        inputs = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in BATCHES}
        rates: dict[tuple[str, int], list[float]] = {(l, b): [] for l in MODELS for b in BATCHES}
        for r in range(args.rounds):
            for label in MODELS:  # alternate models and batch sizes within every round
                for b in BATCHES:
                    rates[(label, b)].append(window(sessions[label], inputs[b], args.window_s))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"\nONNX Runtime CPU, {size} px, {torch.get_num_threads()} threads, shared (busy) machine: "
          f"median of {args.rounds} interleaved {args.window_s:.0f} s windows (min-max)\n")
    print("| model | params | FLOPs (G) | img/s batch 1 | img/s batch 8 |")
    print("|---|---|---|---|---|")
    for label in MODELS:
        c = costs[label]
        cells = [f"{statistics.median(rates[(label, b)]):.1f} ({min(rates[(label, b)]):.1f}-{max(rates[(label, b)]):.1f})"
                 for b in BATCHES]
        print(f"| {label} | {c.params:,} ({c.params_m:.2f} M) | {c.gflops:.2f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
