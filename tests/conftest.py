"""Shared fixtures: reference layouts of the authors' checkpoints and checkpoint writers."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

# The suite's expected values (scores, drift references, INT8 agreement) were taken with ONNX Runtime. On a
# CPU with AVX-512/AMX and openvino installed, `--backend auto` would serve every entry with OpenVINO, so
# the servers started here (and their subprocesses) pin ONNX Runtime; tests/test_openvino.py chooses
# OpenVINO and checks the auto rule itself.
os.environ.setdefault("ECA_SERVE_BACKEND", "onnxruntime")

REFERENCE_DIR = Path(__file__).parent / "data" / "official_state_dict_keys"
REFERENCE_ARCHS = sorted(p.stem for p in REFERENCE_DIR.glob("*.json"))


def load_reference(arch: str) -> dict[str, Any]:
    """One reference JSON (keys, shapes, counts) of the authors' released models."""
    return json.loads((REFERENCE_DIR / f"{arch}.json").read_text())


def random_state_dict(reference: dict[str, Any], seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Random float32 tensors of the reference names and shapes; int64 scalars for num_batches_tracked."""
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, shape in reference["keys"]:
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7, dtype=torch.int64)
        else:
            state[name] = torch.randn(*shape, generator=gen)
    return state


def save_authors_format(state: dict[str, torch.Tensor], path: Path, arch: str = "se_resnet50") -> Path:
    """Write ``state`` as the authors' training scripts did: DataParallel keys, legacy container."""
    obj = {
        "epoch": 100,
        "arch": arch,
        "state_dict": OrderedDict(("module." + k, v) for k, v in state.items()),
        "best_prec1": torch.tensor(77.42),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
    }
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="session")
def authors_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """arch -> (authors'-format file built from the reference layout, the tensors written)."""
    root = tmp_path_factory.mktemp("authors")
    out = {}
    for i, arch in enumerate(REFERENCE_ARCHS):
        state = random_state_dict(load_reference(arch), seed=i)
        out[arch] = (save_authors_format(state, root / f"{arch}.pth.tar"), state)
    return out


def calm_state_dict(reference: dict[str, Any], seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Like `random_state_dict` but numerically calm: He-scaled weights, positive BN variances."""
    state = random_state_dict(reference, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for name, tensor in state.items():
        if name.endswith("running_var"):
            state[name] = torch.rand(tensor.shape, generator=gen) + 0.5
        elif name.endswith(("running_mean", "bias")):
            state[name] = tensor * 0.1
        elif tensor.dim() == 1 and name.endswith("weight"):  # BN scale
            state[name] = 1.0 + 0.1 * tensor
        elif tensor.dim() > 1:
            fan_in = tensor[0].numel()
            state[name] = tensor * (2.0 / fan_in) ** 0.5
    return state


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: small models on a shared CPU run faster so than contending for several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
