"""TorchScript/ONNX export with parity checks, written into a model repository.

The exporter imports torch; it is loaded on first use so that importing this package stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExportOptions", "ExportParityError", "Tolerance", "export_model"]


def __getattr__(name: str) -> Any:
    if name == "export_model":
        from eca_serve.export.exporter import export_model

        return export_model
    if name in ("ExportOptions", "ExportParityError"):
        from eca_serve.export import entry

        return getattr(entry, name)
    if name == "Tolerance":
        from eca_serve.export.parity import Tolerance

        return Tolerance
    raise AttributeError(f"module 'eca_serve.export' has no attribute {name!r}")
