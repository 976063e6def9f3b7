"""Export a built model into a repository entry: weights, TorchScript, ONNX, parity report, config."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from eca_serve.errors import ConfigError
from eca_serve.export.classifier import export_classifier
from eca_serve.export.detector import export_detector
from eca_serve.export.entry import FORMATS, ExportOptions, ExportParityError, Progress
from eca_serve.repository import EntryConfig, check_safe_name

__all__ = ["ExportOptions", "ExportParityError", "export_model"]


def export_model(model: nn.Module, out_dir: Path, options: ExportOptions, progress: Progress = lambda _: None) -> EntryConfig:
    """Write ``out_dir`` (= ``<repository>/<name>/<version>``) for ``model``.

    ``config.json`` is written last and only when every parity check passed, so a failed export never
    leaves an entry the server would load.

    Raises:
        ExportParityError: parity outside tolerance (``parity.json`` is still written for inspection).
        ConfigError: bad name or format.
    """
    check_safe_name(options.name, "model name")
    unknown = set(options.formats) - set(FORMATS)
    if unknown:
        raise ConfigError(f"unknown formats {sorted(unknown)}; choose from {list(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    run = export_classifier if model.config.task == "classification" else export_detector
    return run(model, out_dir, options, progress)
