"""Which repository entries a server can run: INT8 entries need ONNX Runtime or OpenVINO on CPU."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from eca_serve.kinds import ENGINES, Device

log = logging.getLogger(__name__)


def unservable_reason(config: Any, device: Device | str, backend: str = "onnxruntime") -> str | None:
    """Why ``config`` cannot be served by ``backend`` on ``device``; None when it can.

    INT8 entries run on CPU only, by ONNX Runtime or OpenVINO (both read the QDQ graph). Their QDQ graph on the CUDA
    provider would run most int8 ops as dequantize -> float kernels, with CPU fallbacks and copies
    in between: slower than the FP32 parent and with INT8's rounding. A silent fallback to the
    parent would answer a request for this version with another version's numbers, so the entry
    is refused instead, naming the parent to serve.
    """
    if getattr(config, "precision", "fp32") != "int8":
        return None
    parent = config.quantization.parent_version if config.quantization is not None else None
    serve_instead = f"; serve its FP32 parent {config.name}:{parent} instead" if parent else ""
    if backend not in (*ENGINES, "auto"):
        return f"{config.name}:{config.version} is INT8 (ONNX only): serve it with onnxruntime or openvino{serve_instead}"
    if Device(device).is_cuda:
        return f"{config.name}:{config.version} is INT8, served on CPU only, not on {device}{serve_instead}"
    return None


def servable_entries(entries: list[tuple[str, int, Path]], device: Device | str, backend: str,
                     read: Callable[[Path], Any] | None = None) -> list[tuple[str, int, Path]]:
    """``entries`` ((name, version, folder) as `list_entries` gives them) minus those that cannot run there.

    Each one left out is logged with its reason, so that a GPU server, or one on the torchscript or
    eager backend, serves the FP32 versions of a repository that also holds INT8 ones. ``read`` parses
    an entry's config (default `parse_config`; the manager passes one that keeps what it read).
    """
    from eca_serve.repository import parse_config

    read = read or parse_config
    kept = []
    for name, version, folder in entries:
        reason = unservable_reason(read(folder), device, backend)
        if reason is None:
            kept.append((name, version, folder))
        else:
            log.warning("not serving %s", reason)
    return kept
