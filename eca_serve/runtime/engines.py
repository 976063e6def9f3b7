"""Which engine runs an entry on CPU: one documented rule, a pure function of the CPU's flags.

The rule (`default_engine`), used when neither the command line nor the entry's ``serving`` block
names an engine:

* GPU entries: ONNX Runtime (its CUDA execution provider).
* CPU entries: OpenVINO when it is installed and the CPU has AVX-512 or AMX, else ONNX Runtime.

Why: on an Intel Xeon with AMX (2 cores) OpenVINO ran ECA-ResNet-50 1.06-1.40x ONNX Runtime in FP32 and
5.0-5.3x in BF16. On an AMD EPYC (Zen 1, AVX2 only, 2 cores) FP32 batch-1 ratios OpenVINO / ONNX Runtime
were 1.0x (shapes classifier), 0.90x (its QDQ INT8 entry), 1.43x (shapes detector), 1.38x
(ECA-MobileNetV2), 1.40x (ECA-R50): no uniform winner, so there ONNX Runtime stays the default and
``eca-serve profile NAME --recommend --write`` names OpenVINO in the entries where it measured faster.
Nothing is timed at start-up: the same config on the same kind of CPU always gets the same engine.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

from eca_serve.errors import ConfigError
from eca_serve.kinds import ENGINES, PRECISIONS, Device

log = logging.getLogger(__name__)

BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
WIDE_FLAGS = frozenset({"avx512f", "amx_tile", "amx_bf16", "amx_int8"})


@functools.cache
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The ``flags`` of the first CPU in /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown CPU" where there is none)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def has_bf16(flags: frozenset[str]) -> bool:
    """True when the CPU computes BF16 natively (AMX or AVX512_BF16), the only place OpenVINO's BF16 pays."""
    return bool(flags & BF16_FLAGS)


def openvino_installed() -> bool:
    """True when the ``openvino`` package can be imported (the ``[openvino]`` extra), without importing it."""
    return importlib.util.find_spec("openvino") is not None


def default_engine(device: Device | str, flags: frozenset[str], openvino_available: bool) -> str:
    """The engine the rule picks for an entry without one (see the module docstring)."""
    if Device(device).is_cuda:
        return "onnxruntime"
    if openvino_available and flags & WIDE_FLAGS:
        return "openvino"
    return "onnxruntime"


def serving_device(kind: str, device: Device | str) -> Device:
    """The device a server of backend ``kind`` serves on: ``device``, or CPU where no GPU is reachable here.

    ONNX Runtime without its CUDA provider (or torch without CUDA) would run every session on the CPU;
    deciding that once, with a warning, gives those sessions the CPU batching policy, thread split and
    INT8 entries, not a GPU's batches of 32 on the CPU provider. The openvino kind keeps its own error.
    """
    device = Device(device)
    if not device.is_cuda or kind == "openvino" or _cuda_reachable(kind):
        return device
    log.warning("device %s asked for, but %s has no CUDA here (onnxruntime-gpu / a CUDA build of torch): serving on "
                "cpu, with the CPU batching defaults", device, "torch" if kind in ("torchscript", "eager") else "onnxruntime")
    return Device("cpu")


def _cuda_reachable(kind: str) -> bool:
    """True when backend ``kind`` can run on a GPU in this process."""
    if kind in ("torchscript", "eager"):
        import torch

        return torch.cuda.is_available()
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def choose_engine(requested: str, entry_engine: str | None, device: Device | str) -> tuple[str, str]:
    """(engine, why) for one entry.

    Args:
        requested: The server's ``backend`` setting; anything but ``auto`` wins (explicit override).
        entry_engine: The entry's ``serving.engine`` for this device (None or ``auto``: the rule).
        device: The serving device.
    """
    if requested != "auto":
        return requested, "the server's backend setting"
    if entry_engine not in (None, "auto"):
        if entry_engine == "openvino" and not openvino_installed():
            log.warning("config.json asks for openvino, which is not installed (pip install 'eca-serve[openvino]'): "
                        "serving with onnxruntime")
            return "onnxruntime", "openvino not installed"
        return entry_engine, "the entry's serving block"
    return default_engine(device, cpu_flags(), openvino_installed()), "the default rule (eca_serve.runtime.engines)"


def check_precision(engine: str, precision: str, entry_precision: str) -> str:
    """The precision to run: ``precision`` (``fp32``/``bf16``/``int8``) checked against the engine and entry.

    ``int8`` means the entry as it is (a QDQ INT8 entry); ``bf16`` is OpenVINO's inference precision
    hint and needs a CPU with AMX or AVX512_BF16: elsewhere it is logged and FP32 is used.

    Raises:
        ConfigError: a precision that the engine or the entry cannot give.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "int8" and entry_precision != "int8":
        raise ConfigError("precision int8 names a QDQ INT8 entry (eca-serve quantize); this entry is FP32")
    if precision == "bf16":
        if engine != "openvino":
            raise ConfigError(f"precision bf16 needs the openvino engine, not {engine}")
        if not has_bf16(cpu_flags()):
            log.warning("bf16 asked for, but this CPU (%s) has neither AMX nor AVX512_BF16: running FP32 "
                        "(bf16 would be emulated, slower and less exact)", cpu_model())
            return "fp32"
    return precision


def entry_options(options: Any, config: Any) -> Any:
    """``options`` (`BackendOptions`, ``kind`` possibly ``auto``) resolved for one entry: engine and precision.

    The engine comes from `choose_engine`, the precision from the entry's ``serving.precision`` for this
    device (unset: ``int8`` for a QDQ INT8 entry, else ``fp32``), checked by `check_precision`.
    """
    import dataclasses

    serving = config.serving if config.serving is not None and config.serving.applies_to(options.device) else None
    if options.kind not in (*ENGINES, "auto"):  # torchscript / eager: no engine or precision choice
        return options
    engine, why = choose_engine(options.kind, serving.engine if serving else None, options.device)
    entry_precision = getattr(config, "precision", "fp32")
    asked = (serving.precision if serving else None) or entry_precision
    if asked == "bf16" and engine != "openvino":
        log.warning("%s/%s: bf16 needs the openvino engine (%s chose %s): running fp32", config.name, config.version, why, engine)
        asked = "fp32"
    precision = check_precision(engine, asked, entry_precision)
    log.info("%s/%s: engine %s (%s), precision %s", config.name, config.version, engine, why, precision)
    return dataclasses.replace(options, kind=engine, precision=precision)
