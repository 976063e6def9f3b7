"""ModelInferRequest -> the v2 `InferRequest` the HTTP path runs, and output `Tensor`s -> ModelInferResponse.

Every check happens on declared names, datatypes and shapes before any tensor bytes are read, as over
HTTP; every malformed request raises `InferenceRequestError` (gRPC INVALID_ARGUMENT).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf.message import Message

from eca_serve.api.v2_codec import (BYTES, DTYPES, InferRequest, ShapeCheck, Tensor, from_binary, parse_outputs, parse_shape,
                                    tensor_bytes)
from eca_serve.errors import InferenceRequestError

# The typed ``InferTensorContents`` field of each datatype (FP16 and BF16 travel only as raw bytes).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", BYTES: "bytes_contents",
}


def parameter_values(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values.

    A parameter with no value set is left out: tritonclient sends ``uint64_param``, which a client built
    on KServe's proto (which lacks it) forwards as an empty InferParameter.
    """
    values = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        if kind is not None:
            values[key] = getattr(parameter, kind)
    return values


def parse_model_infer(request: Message, check: ShapeCheck) -> InferRequest:
    """The `InferRequest` of a ``ModelInferRequest``; ``check`` sees each input before its data is read.

    Raises:
        InferenceRequestError: Unknown datatype, bad shape, raw contents that do not match the inputs
            one to one or the declared sizes, BYTES length prefixes that overrun, or typed contents of
            the wrong kind or count.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InferenceRequestError(f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs")
    if not request.inputs:
        raise InferenceRequestError("'inputs' must not be empty")
    inputs = [_input(spec, raw[i] if raw else None, check) for i, spec in enumerate(request.inputs)]
    outputs = [{"name": o.name, "parameters": parameter_values(o.parameters)} for o in request.outputs]
    return InferRequest(request.id or None, inputs, parse_outputs(outputs) if outputs else None, True,
                        parameter_values(request.parameters))


def _input(spec: Message, raw: bytes | memoryview | None, check: ShapeCheck) -> Tensor:
    name, datatype = spec.name, spec.datatype
    if not name:
        raise InferenceRequestError("input name must be a non-empty string")
    shape = parse_shape(list(spec.shape))
    if datatype != BYTES and datatype not in DTYPES:
        raise InferenceRequestError(f"input {name!r}: unknown datatype {datatype[:40]!r}; use one of {[*DTYPES, BYTES]}")
    check(name, datatype, shape)
    if raw is not None:
        if spec.HasField("contents"):
            raise InferenceRequestError(f"input {name!r} has both contents and raw_input_contents")
        return Tensor(name, datatype, shape, from_binary(name, datatype, shape, raw))
    return Tensor(name, datatype, shape, _from_contents(name, datatype, shape, spec.contents))


def _from_contents(name: str, datatype: str, shape: tuple[int, ...], contents: Message) -> np.ndarray | list[bytes]:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InferenceRequestError(f"input {name!r}: {datatype} data must come in raw_input_contents")
    values = getattr(contents, field)
    if len(values) != math.prod(shape):
        raise InferenceRequestError(f"input {name!r}: shape {list(shape)} needs {math.prod(shape)} elements in "
                                    f"contents.{field}, got {len(values)}")
    if datatype == BYTES:
        return list(values)
    dtype = DTYPES[datatype]
    wide = np.asarray(values, dtype=np.float64 if dtype.kind == "f" else np.bool_ if dtype.kind == "b" else np.int64 if dtype.kind == "i" else np.uint64)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InferenceRequestError(f"input {name!r}: values out of range for {datatype}")
    return wide.astype(dtype).reshape(shape)


def fill_model_infer_response(response: Message, outputs: list[tuple[Tensor, bool]]) -> None:
    """Append each output's metadata and its bytes in ``raw_output_contents`` (as Triton always does)."""
    for tensor, _ in outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        response.raw_output_contents.append(tensor_bytes(tensor))
