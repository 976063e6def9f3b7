"""Writing TorchScript and ONNX artifacts of classifiers and detectors."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from eca_serve.export.gates import rewrite_gates_file
from eca_serve.introspect import AttentionOutputs
from eca_serve.repository import EMBEDDING_OUTPUT, attention_output

ONNX_OPSET = 17
INPUT_NAME = "input"


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence torch's deprecation notice of TorchScript for our own calls only: every export printed
    it three times, and the runtime still needs TorchScript (no replacement takes ``model.pt``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def export_torchscript(model: nn.Module, path: Path) -> torch.jit.ScriptModule:
    """Script ``model`` (``forward``, ``forward_with_attention``, a classifier's ``forward_with_embedding``) and save it.

    The saved module is not frozen: a frozen module bakes its weights in as constants on the export
    device, so the runtime freezes it after loading it onto the serving device instead.
    """
    with _quiet_jit():
        scripted = torch.jit.script(model)
    scripted.save(str(path))
    return scripted


def freeze_torchscript(scripted: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """Frozen copy (BN folded into convolutions, attributes inlined) keeping the read-out methods it has."""
    with _quiet_jit():
        return torch.jit.freeze(scripted.eval(), preserved_attrs=readout_methods(scripted))


def readout_methods(scripted: torch.jit.ScriptModule) -> list[str]:
    """``forward_with_attention``, and ``forward_with_embedding`` where the module has it (classifiers
    exported with their pooled features)."""
    return [m for m in ("forward_with_attention", "forward_with_embedding") if hasattr(scripted, m)]


def torchscript_variants(model: nn.Module, path: Path, method: str = "forward_with_attention") -> dict[str, Any]:
    """Write ``model.pt`` and return ``method`` of every TorchScript form the parity check compares: as
    scripted, reloaded from disk, and frozen as the runtime serves it."""
    scripted = export_torchscript(model, path)
    with _quiet_jit():
        reloaded = torch.jit.load(str(path), map_location="cpu")
        frozen = freeze_torchscript(torch.jit.load(str(path), map_location="cpu"))
    return {
        "torchscript": getattr(scripted, method),
        "torchscript_reloaded": getattr(reloaded, method),
        "torchscript_frozen": getattr(frozen, method),
    }


def classifier_output_names(model: nn.Module) -> list[str]:
    """``logits``, one attention output per layer in ``model.attention_layers`` order, then ``embedding``."""
    return ["logits"] + [attention_output(n) for n in model.attention_layers] + [EMBEDDING_OUTPUT]


def export_classifier_onnx(model: nn.Module, path: Path, example: Tensor) -> list[str]:
    """ONNX graph returning logits, every layer's attention and the embedding, dynamic in batch, height and width.

    The attention gates are rewritten into the form ONNX Runtime runs cheapest (`eca_serve.export.gates`).

    Args:
        model: Classifier in eval mode.
        path: Output ``.onnx`` file.
        example: Example input [B, 3, H, W].

    Returns:
        The graph's output names.
    """
    names = classifier_output_names(model)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, **{n: {0: "batch"} for n in names}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            AttentionOutputs(model).eval(), (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME], output_names=names, dynamic_axes=axes,
        )
    rewrite_gates_file(path, [n for n in names if n.startswith("attention/")])
    return names


def check_onnx(path: Path) -> None:
    """Run ``onnx.checker`` on the saved graph (raises ``onnx.checker.ValidationError``)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
