"""TorchScript/ONNX export with parity checks, written into a model repository."""

from eca_serve.export.exporter import ExportOptions, ExportParityError, export_model
from eca_serve.export.parity import Tolerance
from eca_serve.export.repository import EntryConfig, list_entries, read_config

__all__ = ["EntryConfig", "ExportOptions", "ExportParityError", "Tolerance", "export_model", "list_entries", "read_config"]
