"""TorchScript/ONNX export with parity checks, written into a model repository.

The exporter imports torch; it is loaded on first use so that importing this package stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExportOptions", "ExportParityError", "Tolerance", "export_model"]


def __getattr__(name: str) -> Any:
    if name in ("ExportOptions", "ExportParityError", "export_model"):
        from eca_serve.export import exporter

        return getattr(exporter, name)
    if name == "Tolerance":
        from eca_serve.export.parity import Tolerance

        return Tolerance
    raise AttributeError(f"module 'eca_serve.export' has no attribute {name!r}")
