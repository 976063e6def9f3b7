"""The closed vocabularies of configuration, each defined once: devices, backend kinds, engines, precisions.

Settings, config.json (`eca_serve.repository`), the batcher, the runtime and the CLI import these instead
of spelling the lists again; `Device` is parsed once where a value enters (settings, config, options).
Standard library only (pydantic just when it builds a schema), so that the batcher may import it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal, get_args

from eca_serve.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import CoreSchema

BackendKind = Literal["onnxruntime", "openvino", "torchscript", "eager"]
BackendChoice = Literal["auto", BackendKind]  # what a user may ask for: a kind, or the rule of runtime.engines
Engine = Literal["onnxruntime", "openvino"]  # the kinds that serve an entry's model.onnx
Precision = Literal["fp32", "bf16", "int8"]
DeviceKind = Literal["cpu", "cuda"]

BACKEND_KINDS: tuple[str, ...] = get_args(BackendKind)
BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKEND_KINDS)
ENGINES: tuple[str, ...] = get_args(Engine)
PRECISIONS: tuple[str, ...] = get_args(Precision)

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


class Device(str):
    """A serving device in its canonical form, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, however it was spelled.

    A ``str`` so that logs, JSON and ``torch.device`` take it as they took the plain string; code asks
    `kind`, `is_cuda` and `index` instead of re-parsing it (``"CPU"`` once refused INT8 entries as
    "served on CPU only, not on CPU"). ``Device(Device(x))`` is the same value, so any layer may
    accept ``Device | str`` and parse again at no risk.

    Raises:
        ConfigError: (a ValueError, so pydantic reports it as a validation error) any other value.
    """

    def __new__(cls, value: object) -> Device:
        if isinstance(value, Device):
            return value
        text = value.strip().lower() if isinstance(value, str) else ""
        if not _DEVICE.fullmatch(text):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {value!r}")
        return super().__new__(cls, text)

    @property
    def kind(self) -> DeviceKind:
        """``"cpu"`` or ``"cuda"`` (``"cuda:N"`` is of kind ``"cuda"``)."""
        return "cuda" if self.startswith("cuda") else "cpu"

    @property
    def is_cuda(self) -> bool:
        """True for ``cuda`` and ``cuda:N``."""
        return self.kind == "cuda"

    @property
    def index(self) -> int:
        """The GPU's ordinal (``cuda`` is ``cuda:0``); 0 on CPU."""
        return int(self.split(":", 1)[1]) if ":" in self else 0

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        from pydantic_core import core_schema  # here: the batcher imports this module and only the stdlib

        return core_schema.no_info_after_validator_function(cls, core_schema.str_schema(),
                                                           serialization=core_schema.to_string_ser_schema())


def device_kind(value: object) -> DeviceKind:
    """The kind of a ``serving.device`` value: ``cpu`` or ``cuda`` in any spelling (``cuda:N`` is refused there)."""
    device = Device(value)
    if device != device.kind:
        raise ConfigError(f"serving.device names a kind, cpu or cuda, got {value!r}")
    return device.kind
