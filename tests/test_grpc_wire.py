"""raw_input_contents taken out of a serialized ModelInferRequest as views: the same request as protobuf parses."""

from __future__ import annotations

import numpy as np
import pytest

from eca_serve.api.grpc.protocol import messages
from eca_serve.errors import InferenceRequestError
from eca_serve.api.grpc.tensors import parse_model_infer
from eca_serve.api.grpc.wire import MAX_FIELDS, MIN_BYTES, split_raw_contents


def infer_request(rows: int = 2, side: int = 48) -> tuple[bytes, np.ndarray]:
    """A serialized request with two inputs (FP32 [rows, 3, side, side], BYTES [1]), parameters and outputs."""
    x = np.random.default_rng(0).standard_normal((rows, 3, side, side), dtype=np.float32)
    request = messages().ModelInferRequest(model_name="m", model_version="2", id="r7",
                                           raw_input_contents=[x.tobytes(), b"\x03\0\0\0abc"])
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.outputs.add(name="logits").parameters["classification"].int64_param = 2
    request.parameters["timeout"].int64_param = 5
    return request.SerializeToString(), x


def parse_both(data: bytes) -> tuple:
    rest, raw = split_raw_contents(data)
    ModelInferRequest = messages().ModelInferRequest
    return (parse_model_infer(ModelInferRequest.FromString(data), lambda *_: None),
            parse_model_infer(ModelInferRequest.FromString(rest), lambda *_: None, raw))


def test_split_request_parses_to_the_same_tensors_and_fields() -> None:
    data, x = infer_request()
    assert len(data) >= MIN_BYTES
    full, split = parse_both(data)
    np.testing.assert_array_equal(split.inputs[0].data, x)
    assert split.inputs[1].data == full.inputs[1].data == [b"abc"]
    assert (split.id, split.outputs, split.parameters) == (full.id, full.outputs, full.parameters)
    rest, _ = split_raw_contents(data)
    assert len(rest) < 200 and not messages().ModelInferRequest.FromString(rest).raw_input_contents


def test_fields_in_any_order() -> None:
    """Protobuf allows fields in any order: raw contents first, metadata after."""
    data, x = infer_request()
    message = messages().ModelInferRequest.FromString(data)
    raw = messages().ModelInferRequest(raw_input_contents=message.raw_input_contents).SerializeToString()
    del message.raw_input_contents[:]
    _, split = parse_both(raw + message.SerializeToString())
    np.testing.assert_array_equal(split.inputs[0].data, x)


def test_small_or_unusual_requests_are_left_to_protobuf() -> None:
    data, _ = infer_request()
    small, _ = infer_request(rows=1, side=4)
    assert split_raw_contents(small) is None
    assert split_raw_contents(data[:-1]) is None  # a length past the end
    assert split_raw_contents(data + b"\x0b") is None  # a group (wire type 3)
    assert split_raw_contents(data + b"\xff" * 11) is None  # a key of more than 10 varint bytes
    assert split_raw_contents(data + b"\x08\x01" * MAX_FIELDS) is None  # more fields than the walk takes
    assert split_raw_contents(b"\x00" + data) is None  # field number 0


def test_too_few_raw_contents_are_still_refused() -> None:
    data, _ = infer_request()
    message = messages().ModelInferRequest.FromString(data)
    del message.raw_input_contents[1]
    rest, raw = split_raw_contents(message.SerializeToString())
    with pytest.raises(InferenceRequestError, match="raw_input_contents holds 1 entries for 2 inputs"):
        parse_model_infer(messages().ModelInferRequest.FromString(rest), lambda *_: None, raw)
