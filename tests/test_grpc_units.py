"""gRPC request translation, deadlines, status codes and the ``--grpc-port`` option, without a server."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest

from eca_serve import errors
from eca_serve.api.grpc.protocol import messages
from eca_serve.api.grpc.server import grpc_address
from eca_serve.api.grpc.service import InflightLimitError, status_of, with_deadline
from eca_serve.api.grpc.tensors import parameter_values, parse_model_infer
from eca_serve.api.v2_codec import tensor_bytes
from eca_serve.api.v2_codec import InferRequest, Tensor
from eca_serve.cli import build_parser
from eca_serve.cli.serve_commands import _settings

seen: list[tuple[str, str, tuple[int, ...]]] = []


def record(name: str, datatype: str, shape: tuple[int, ...]) -> None:
    seen.append((name, datatype, shape))


def test_parameters_of_every_kind_and_none() -> None:
    request = messages().ModelInferRequest()
    request.parameters["a"].bool_param = True
    request.parameters["b"].int64_param = -3
    request.parameters["c"].string_param = "x"
    request.parameters["d"].double_param = 0.25
    request.parameters["e"].uint64_param = 2**63
    request.parameters["f"].SetInParent()
    assert parameter_values(request.parameters) == {"a": True, "b": -3, "c": "x", "d": 0.25, "e": 2**63}


def test_raw_and_typed_inputs_give_the_same_tensor() -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    raw = messages().ModelInferRequest(raw_input_contents=[x.tobytes()])
    raw.inputs.add(name="input", datatype="FP32", shape=[1, 1, 2, 3])
    typed = messages().ModelInferRequest()
    typed.inputs.add(name="input", datatype="FP32", shape=[1, 1, 2, 3]).contents.fp32_contents.extend(x.ravel())
    for request in (raw, typed):
        seen.clear()
        parsed = parse_model_infer(request, record)
        assert seen == [("input", "FP32", (1, 1, 2, 3))]
        np.testing.assert_array_equal(parsed.inputs[0].data, x)
        assert parsed.outputs is None and parsed.id is None


def test_shape_is_checked_before_the_data() -> None:
    request = messages().ModelInferRequest(raw_input_contents=[b"short"])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 8, 8])

    def refuse(name: str, datatype: str, shape: tuple[int, ...]) -> None:
        raise errors.TooManyImagesError("refused on the declared shape")

    with pytest.raises(errors.TooManyImagesError):
        parse_model_infer(request, refuse)


@pytest.mark.parametrize("datatype, field, values, ok", [
    ("INT8", "int_contents", [-128, 127], True), ("INT8", "int_contents", [128, 0], False),
    ("UINT8", "uint_contents", [0, 255], True), ("UINT16", "uint_contents", [0, 70000], False),
    ("BOOL", "bool_contents", [True, False], True), ("FP16", "fp32_contents", [1.0, 2.0], False),
])
def test_typed_contents_ranges(datatype: str, field: str, values: list, ok: bool) -> None:
    request = messages().ModelInferRequest()
    getattr(request.inputs.add(name="t", datatype=datatype, shape=[2]).contents, field).extend(values)
    if ok:
        assert parse_model_infer(request, record).inputs[0].data.tolist() == values
    else:
        with pytest.raises(errors.InferenceRequestError):
            parse_model_infer(request, record)


def test_outputs_become_output_requests_with_classification() -> None:
    request = messages().ModelInferRequest(id="r1", raw_input_contents=[struct.pack("<I", 2) + b"ab"])
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.outputs.add(name="logits").parameters["classification"].int64_param = 3
    parsed = parse_model_infer(request, record)
    assert parsed.id == "r1" and parsed.inputs[0].data == [b"ab"]
    assert [(o.name, o.classification) for o in parsed.outputs] == [("logits", 3)]


def test_output_bytes() -> None:
    assert tensor_bytes(Tensor("s", "BYTES", (2,), [b"a", b""])) == b"\x01\0\0\0a\0\0\0\0"
    assert tensor_bytes(Tensor("x", "INT64", (2,), np.array([1, -1]))) == struct.pack("<qq", 1, -1)


def test_client_deadline_caps_the_request_timeout() -> None:
    request = InferRequest(None, [], None, parameters={"timeout": 5_000_000})
    assert with_deadline(request, None) is request
    assert with_deadline(request, 2.0).parameters["timeout"] == 2_000_000
    assert with_deadline(request, 9.0).parameters["timeout"] == 5_000_000
    assert with_deadline(InferRequest(None, [], None), 1e-9).parameters["timeout"] == 1
    with pytest.raises(errors.RequestTimeoutError):
        with_deadline(request, 0.0)


@pytest.mark.parametrize("error, code", [
    (errors.InferenceRequestError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidImageError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.UnknownModelError("x"), grpc.StatusCode.NOT_FOUND),
    (errors.ImageTooLargeError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.QueueFullError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InflightLimitError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NotReadyError("x"), grpc.StatusCode.UNAVAILABLE),
    (errors.ShuttingDownError("x"), grpc.StatusCode.UNAVAILABLE),
    (errors.RequestTimeoutError("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.BatchResultError("x"), grpc.StatusCode.INTERNAL),
    (KeyError("x"), grpc.StatusCode.INTERNAL),
])
def test_error_groups_map_to_status_codes(error: Exception, code: grpc.StatusCode) -> None:
    assert status_of(error) == code


def test_grpc_port_option_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    assert _settings(parser.parse_args(["serve"])).grpc_port == 8001
    assert _settings(parser.parse_args(["serve", "--grpc-port", "0"])).grpc_port == 0
    monkeypatch.setenv("ECA_SERVE_GRPC_PORT", "9100")
    assert _settings(parser.parse_args(["serve"])).grpc_port == 9100
    assert grpc_address("::", 1) == "[::]:1" and grpc_address("0.0.0.0", 1) == "0.0.0.0:1"


def test_every_error_type_has_a_real_grpc_code_beside_its_http_status() -> None:
    from eca_serve.api.errors import STATUSES, grpc_code_name_of

    assert {name for _, _, name in STATUSES} <= set(grpc.StatusCode.__members__)
    for cls, _, name in STATUSES:  # the table's own order: no row hidden behind a broader one above it
        assert grpc_code_name_of(cls("x")) == name, cls
