"""Open Inference Protocol (KServe v2 / Triton HTTP) bodies <-> tensors, with the binary tensor extension.

Pure parsing and encoding: no models, no HTTP framework. A malformed request raises
`InferenceRequestError` (HTTP 400), a parameter value that breaks its rule (priority, timeout, classification
count) `InvalidParameterError` (HTTP 422), each with a message meant for the client.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from eca_serve.errors import InferenceRequestError, InvalidParameterError

HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES = "BYTES"
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(kind).newbyteorder("<") for name, kind in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
        "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
        "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }.items()
}
MAX_RANK = 8
# Far more elements than any request body can carry; numpy cannot even describe some larger shapes.
MAX_ELEMENTS = 2**31 - 1
MAX_TIMEOUT_US = 2**64 - 1  # parameters.timeout is a uint64 in Triton
_DECIMAL = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
_LENGTH = struct.Struct("<I")
# Which JSON value kinds (numpy dtype.kind of the parsed list) each datatype accepts.
_JSON_KINDS = {"BOOL": "b", **{n: "iu" for n in DTYPES if n.startswith(("INT", "UINT"))}, "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}

ShapeCheck = Callable[[str, str, tuple[int, ...]], None]
"""``check(name, datatype, shape)`` raises before any tensor data of that input is read."""


@dataclass(frozen=True)
class Tensor:
    """A named tensor: numeric data as an array of ``shape``, BYTES as a flat list of ``prod(shape)`` items."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]


@dataclass(frozen=True)
class OutputRequest:
    """One entry of a request's ``outputs``: ``binary`` None defers to the request-level default."""

    name: str
    binary: bool | None = None
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request; ``outputs`` None means every output of the model."""

    id: str | None
    inputs: list[Tensor]
    outputs: list[OutputRequest] | None
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def parse_infer_request(body: bytes, header_length: str | None, check: ShapeCheck | None = None) -> InferRequest:
    """Parse a JSON infer request, followed by the inputs' binary data when ``header_length`` is given.

    Args:
        body: The whole (decompressed) request body.
        header_length: The ``Inference-Header-Content-Length`` header: length of the JSON part.
        check: Called per input with its declared name, datatype and shape before its data is read.

    Raises:
        InferenceRequestError: Malformed JSON, a shape that does not match the data, binary data
            that is truncated or left over, or any field of the wrong type.
    """
    header, binary = split_body(body, header_length)
    raw = load_json(header)
    parameters = _dict(raw.get("parameters"), "parameters")
    specs = raw.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise InferenceRequestError("'inputs' must be a non-empty list")
    view, offset, inputs = memoryview(binary), 0, []
    for spec in specs:
        tensor, offset = parse_input(_dict(spec, "inputs[]"), view, offset, check)
        inputs.append(tensor)
    if offset != len(binary):
        raise InferenceRequestError(f"{len(binary) - offset} bytes of binary data follow the inputs' declared sizes")
    binary_output = parameters.get("binary_data_output", False)
    return InferRequest(_request_id(raw.get("id")), inputs, parse_outputs(raw.get("outputs")),
                        _bool(binary_output, "parameters.binary_data_output"), parameters)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a body; all JSON when no header length is given."""
    if header_length is None:
        return body, b""
    length = parse_decimal(header_length.strip())
    if length is None or not 0 < length <= len(body):
        raise InferenceRequestError(f"{HEADER_LENGTH} must be an integer in 1..{len(body)} (the body size), got {header_length!r}")
    return body[:length], body[length:]


def parse_decimal(text: str) -> int | None:
    """A non-negative integer written with 1 to 18 ASCII digits, else None."""
    return int(text) if _DECIMAL.fullmatch(text) else None


def load_json(data: bytes) -> dict[str, Any]:
    """The JSON object of a request header."""
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InferenceRequestError(f"malformed JSON in the request: {exc}") from None
    return _dict(raw, "the request")


def parse_input(spec: dict[str, Any], binary: memoryview, offset: int, check: ShapeCheck | None) -> tuple[Tensor, int]:
    """One input tensor from its JSON spec and, if it declares ``binary_data_size``, ``binary[offset:]``.

    Returns:
        The tensor and the offset just past its binary data.
    """
    name, datatype, shape = _str(spec.get("name"), "input name"), spec.get("datatype"), parse_shape(spec.get("shape"))
    if not isinstance(datatype, str) or (datatype != BYTES and datatype not in DTYPES):
        raise InferenceRequestError(f"input {name!r}: unknown datatype {datatype!r}; use one of {[*DTYPES, BYTES]}")
    if check is not None:
        check(name, datatype, shape)
    size = _dict(spec.get("parameters"), f"input {name!r} parameters").get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise InferenceRequestError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        return Tensor(name, datatype, shape, _from_json(name, datatype, shape, spec["data"])), offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InferenceRequestError(f"input {name!r}: binary_data_size must be an integer >= 0, got {size!r}")
    if offset + size > len(binary):
        raise InferenceRequestError(f"input {name!r}: binary data truncated ({len(binary) - offset} of {size} bytes present)")
    return Tensor(name, datatype, shape, from_binary(name, datatype, shape, binary[offset: offset + size])), offset + size


def parse_shape(value: object) -> tuple[int, ...]:
    """A tensor shape: a list of at most `MAX_RANK` integers >= 0, its non-zero dimensions multiplying to at most `MAX_ELEMENTS`."""
    if not isinstance(value, list) or len(value) > MAX_RANK or not all(_is_int(d) and d >= 0 for d in value):
        raise InferenceRequestError(f"shape must be a list of at most {MAX_RANK} integers >= 0, got {value!r}")
    if math.prod(d for d in value if d) > MAX_ELEMENTS:
        raise InferenceRequestError(f"shape {value} declares more than {MAX_ELEMENTS} elements")
    return tuple(value)


def parse_outputs(value: object) -> list[OutputRequest] | None:
    """The requested outputs (None if omitted); names must be unique."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise InferenceRequestError(f"'outputs' must be a list, got {type(value).__name__}")
    outputs = []
    for item in value:
        spec = _dict(item, "outputs[]")
        name = _str(spec.get("name"), "output name")
        params = _dict(spec.get("parameters"), f"output {name!r} parameters")
        binary = params.get("binary_data")
        count = params.get("classification", 0)
        if not _is_int(count) or count < 0:
            raise InvalidParameterError(f"output {name!r}: classification must be an integer >= 0, got {count!r}")
        outputs.append(OutputRequest(name, None if binary is None else _bool(binary, f"output {name!r} binary_data"), count))
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise InferenceRequestError(f"outputs are requested more than once: {sorted({n for n in names if names.count(n) > 1})}")
    return outputs


def from_binary(name: str, datatype: str, shape: tuple[int, ...], data: memoryview | bytes) -> np.ndarray | list[bytes]:
    """A tensor from its raw bytes (v2 binary extension, gRPC ``raw_input_contents``); BYTES are length-prefixed."""
    count = math.prod(shape)
    if datatype == BYTES:
        return deserialize_bytes(data, count, name)
    expected = count * DTYPES[datatype].itemsize
    if len(data) != expected:
        raise InferenceRequestError(f"input {name!r}: shape {list(shape)} of {datatype} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=DTYPES[datatype]).reshape(shape)


def _from_json(name: str, datatype: str, shape: tuple[int, ...], data: object) -> np.ndarray | list[bytes]:
    items = _flatten(data, len(shape))
    if len(items) != math.prod(shape):
        raise InferenceRequestError(f"input {name!r}: shape {list(shape)} needs {math.prod(shape)} elements, got {len(items)}")
    if datatype == BYTES:
        if not all(isinstance(v, str) for v in items):
            raise InferenceRequestError(f"input {name!r}: BYTES data in JSON must be strings")
        try:
            return [v.encode("utf-8") for v in items]
        except UnicodeEncodeError:  # JSON escapes can spell lone surrogates ("\ud800"), which UTF-8 cannot carry
            raise InferenceRequestError(f"input {name!r}: BYTES data in JSON must be valid Unicode (no lone surrogates)") from None
    if DTYPES[datatype].kind in "iu":
        return _json_integers(name, datatype, shape, items)
    try:
        parsed = np.asarray(items) if items else np.zeros(0, DTYPES[datatype])
    except ValueError:
        parsed = np.asarray([], dtype=object)  # ragged leftovers: rejected below
    if (items and parsed.dtype.kind not in _JSON_KINDS[datatype]) or parsed.ndim != 1:
        raise InferenceRequestError(f"input {name!r}: data must be {len(items)} {datatype} numbers (flat or nested like the shape)")
    return parsed.astype(DTYPES[datatype]).reshape(shape)


def _json_integers(name: str, datatype: str, shape: tuple[int, ...], items: list[Any]) -> np.ndarray:
    """Integers exactly as sent: numpy would pass large ones through float64 or wrap those out of range."""
    dtype = DTYPES[datatype]
    info = np.iinfo(dtype)
    if not all(_is_int(v) and info.min <= v <= info.max for v in items):
        raise InferenceRequestError(f"input {name!r}: data must be {len(items)} integers in [{info.min}, {info.max}] for {datatype}")
    return np.array(items, dtype=dtype).reshape(shape)


def _flatten(data: object, depth: int) -> list[Any]:
    """Row-major elements of flat or nested lists, unnesting at most ``depth`` levels."""
    if not isinstance(data, list):
        raise InferenceRequestError(f"tensor 'data' must be a list, got {type(data).__name__}")
    items = data
    for _ in range(max(depth - 1, 0)):
        if not any(isinstance(v, list) for v in items):
            break
        items = [w for v in items for w in (v if isinstance(v, list) else [v])]
    return items


def serialize_bytes(items: list[bytes]) -> bytes:
    """BYTES elements as Triton's wire format: each a 4-byte little-endian length, then its bytes."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def deserialize_bytes(data: memoryview | bytes, count: int, name: str = "") -> list[bytes]:
    """Exactly ``count`` length-prefixed BYTES elements filling ``data``."""
    view, items, offset = memoryview(data), [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InferenceRequestError(f"input {name!r}: BYTES data truncated inside a length prefix")
        (length,) = _LENGTH.unpack(view[offset: offset + 4])
        if offset + 4 + length > len(view):
            raise InferenceRequestError(f"input {name!r}: BYTES element {len(items)} truncated ({length} bytes declared)")
        items.append(bytes(view[offset + 4: offset + 4 + length]))
        offset += 4 + length
        if len(items) > count:
            break
    if len(items) != count:
        held = "more" if len(items) > count else str(len(items))
        raise InferenceRequestError(f"input {name!r}: shape needs {count} BYTES elements, the data holds {held}")
    return items


def encode_infer_response(head: dict[str, Any], outputs: list[tuple[Tensor, bool]]) -> tuple[bytes, int | None]:
    """Response body and, when any output is binary, the JSON part's length (for `HEADER_LENGTH`).

    Args:
        head: ``model_name``, ``model_version``, optional ``id``: copied into the response JSON.
        outputs: (tensor, send as binary) in response order.
    """
    specs, blobs = [], []
    for tensor, binary in outputs:
        spec: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary:
            blob = tensor_bytes(tensor)
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            spec["data"] = _tensor_json(tensor)
        specs.append(spec)
    header = json.dumps({**head, "outputs": specs}, separators=(",", ":")).encode()
    return (header + b"".join(blobs), len(header)) if blobs else (header, None)


def tensor_bytes(tensor: Tensor) -> bytes:
    """Row-major little-endian bytes; BYTES elements each with a 4-byte little-endian length."""
    if tensor.datatype == BYTES:
        return serialize_bytes(list(tensor.data))
    return np.ascontiguousarray(tensor.data, dtype=DTYPES[tensor.datatype]).tobytes()


def _tensor_json(tensor: Tensor) -> list[Any]:
    if tensor.datatype == BYTES:
        return [item.decode("utf-8", errors="replace") for item in tensor.data]
    return np.asarray(tensor.data).reshape(-1).tolist()


def request_priority(parameters: dict[str, Any]) -> int:
    """``parameters.priority``: an integer, higher runs first (0 = default)."""
    value = parameters.get("priority", 0)
    if not _is_int(value):
        raise InvalidParameterError(f"parameters.priority must be an integer, got {value!r}")
    return value


def request_timeout_s(parameters: dict[str, Any]) -> float | None:
    """``parameters.timeout`` (microseconds) in seconds; None (the server default) when absent or 0."""
    value = parameters.get("timeout", 0)
    if not _is_int(value) or not 0 <= value <= MAX_TIMEOUT_US:
        raise InvalidParameterError(f"parameters.timeout must be an integer number of microseconds in [0, 2**64), got {value!r}")
    return value / 1e6 if value else None


def _request_id(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InferenceRequestError(f"'id' must be a string, got {type(value).__name__}")


def _dict(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InferenceRequestError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InferenceRequestError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InferenceRequestError(f"{what} must be true or false, got {value!r}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
