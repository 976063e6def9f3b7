"""Reading checkpoints safely and loading them strictly.

Accepted formats: the ECA-Net authors' ``.pth.tar`` dicts (``state_dict``, ``epoch``, ``arch``,
``best_prec1``, maybe ``optimizer``; ``module.`` key prefix from DataParallel; pre-1.6 legacy
serialisation; tensors saved from CUDA), plain state dicts, and safetensors files. Pickle files are
only ever read with ``weights_only=True``: a file that needs arbitrary code is refused.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from eca_serve.errors import CheckpointError

StateDict = dict[str, Tensor]
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict")


@dataclass
class Checkpoint:
    """A checkpoint's tensors and what the file says about itself.

    Attributes:
        state_dict: Clean tensors (``module.`` stripped, no ``_metadata``), on CPU.
        meta: Other entries of the file (``epoch``, ``arch``, ...) or safetensors metadata. Untrusted.
    """

    state_dict: StateDict
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any] | None:
        """The eca-serve model config stored by our own exports (safetensors metadata ``config``)."""
        raw = self.meta.get("config")
        return json.loads(raw) if isinstance(raw, str) else None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file without executing code from it.

    Args:
        path: ``.safetensors`` file, or a ``torch.save`` file (zip or legacy container).

    Returns:
        The clean state dict and the file's other entries.

    Raises:
        CheckpointError: unreadable file, a pickle that needs code outside the weights-only allowlist,
            or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_unpickling_message(path.name, str(exc))) from None
    except Exception as exc:  # corrupt zip, truncated file, not a torch file at all
        raise CheckpointError(f"cannot read checkpoint {path.name}: {_first_line(exc)}") from None
    state, meta = _split_container(obj, path.name)
    return Checkpoint(strip_prefix(state), meta)


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors file {path.name}: {_first_line(exc)}") from None
    return Checkpoint(strip_prefix(state), meta)


def _split_container(obj: Any, name: str) -> tuple[Mapping[str, Any], dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name} holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    for key in _CONTAINER_KEYS:
        if isinstance(obj.get(key), Mapping):
            meta = {k: v for k, v in obj.items() if k not in (key, "optimizer")}
            return obj[key], meta
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj, {}
    raise CheckpointError(f"{name} has no state dict (looked for {list(_CONTAINER_KEYS)} or a flat dict of tensors)")


def strip_prefix(state: Mapping[str, Any], prefix: str = "module.") -> StateDict:
    """A plain dict of tensors with a leading ``prefix`` removed from every key that has it.

    Rebuilding the dict also drops ``_metadata``, so old files without ``num_batches_tracked`` load.
    """
    out: StateDict = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key[len(prefix):] if key.startswith(prefix) else key] = value
    return out


def eca_kernel_sizes(state: Mapping[str, Tensor]) -> dict[str, int]:
    """ECA module path -> 1-D kernel size, read from ``<path>.conv.weight`` tensors of shape [1, 1, k]."""
    suffix = ".conv.weight"
    return {
        key[: -len(suffix)]: int(value.shape[-1])
        for key, value in state.items()
        if key.endswith(suffix) and value.dim() == 3 and tuple(value.shape[:2]) == (1, 1)
    }


@dataclass
class KeyReport:
    """Differences between a checkpoint and a model's expected state dict."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 12) -> str:
        """Human-readable summary naming the keys (first ``limit`` of each kind)."""
        parts = []
        if self.mismatched:
            shown = [f"{k}: checkpoint {list(got)} vs model {list(exp)}" for k, exp, got in self.mismatched[:limit]]
            parts.append(f"{len(self.mismatched)} shape mismatch(es): " + "; ".join(shown))
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {', '.join(self.missing[:limit])}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {', '.join(self.unexpected[:limit])}")
        return " | ".join(parts)


def compare_keys(model: nn.Module, state: Mapping[str, Tensor]) -> KeyReport:
    """Compare ``state`` with ``model.state_dict()``; an absent ``num_batches_tracked`` is allowed."""
    expected = model.state_dict()
    report = KeyReport()
    for key, tensor in expected.items():
        if key not in state:
            if not key.endswith("num_batches_tracked"):
                report.missing.append(key)
        elif tuple(state[key].shape) != tuple(tensor.shape):
            report.mismatched.append((key, tuple(tensor.shape), tuple(state[key].shape)))
    report.unexpected = [k for k in state if k not in expected]
    return report


def load_state_dict_strict(model: nn.Module, state: Mapping[str, Tensor], *, source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` with ``strict=True``, failing with every difference named.

    Raises:
        CheckpointError: missing or unexpected keys, or shape mismatches.
    """
    report = compare_keys(model, state)
    if not report.ok:
        raise CheckpointError(f"{source} does not match the architecture: {report.describe()}")
    model.load_state_dict(dict(state), strict=True)


def load_checkpoint(model: nn.Module, path: str | Path) -> Checkpoint:
    """Read ``path`` safely and load it strictly into ``model`` (no architecture changes)."""
    ckpt = read_checkpoint(path)
    load_state_dict_strict(model, ckpt.state_dict, source=Path(path).name)
    return ckpt


def _unpickling_message(name: str, text: str) -> str:
    blocked = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), None)
    if blocked:
        return (f"refused to load {name}: it needs objects outside torch's weights-only allowlist "
                f"and arbitrary code is never unpickled ({blocked})")
    return f"cannot read checkpoint {name}: not a valid torch checkpoint"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
