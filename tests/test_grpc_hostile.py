"""Hostile and unusual gRPC requests: each gets a status code, and the server keeps serving.

Requests are built with the server's own messages and sent as raw bytes (no client-side checks), or
sent as bytes that are no protobuf at all.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

import grpc
import numpy as np
import pytest

from eca_serve.api.grpc.protocol import SERVICE, messages
from tests.grpc_serving import CLS, DET, grpc_server, raw_call
from tests.hostile_images import png_bytes

OK, INVALID, NOT_FOUND, EXHAUSTED = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                     grpc.StatusCode.RESOURCE_EXHAUSTED)
IMAGE = png_bytes((64, 64))


def prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def infer(model: str = CLS, name: str = "image", datatype: str = "BYTES", shape: tuple[int, ...] = (1,),
          raw: list[bytes] | None = None, edit: Callable[[Any], None] | None = None) -> bytes:
    request = messages().ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    request.raw_input_contents.extend([prefixed(IMAGE)] if raw is None else raw)
    if edit is not None:
        edit(request)
    return request.SerializeToString()


def _typed_fp32(request: Any) -> None:
    del request.raw_input_contents[:]
    request.inputs[0].contents.fp32_contents.extend(np.full(3 * 64 * 64, 0.5, np.float32))


def _typed_bytes(request: Any) -> None:
    del request.raw_input_contents[:]
    request.inputs[0].contents.bytes_contents.append(IMAGE)


def _empty_parameter(request: Any) -> None:
    request.parameters["priority"].SetInParent()  # no value set, as KServe-proto clients forward tritonclient's uint64


CASES: dict[str, tuple[bytes, grpc.StatusCode]] = {
    "valid": (infer(), OK),
    "typed fp32_contents": (infer(name="input", datatype="FP32", shape=(1, 3, 64, 64), raw=[], edit=_typed_fp32), OK),
    "typed bytes_contents": (infer(raw=[], edit=_typed_bytes), OK),
    "parameter with no value": (infer(edit=_empty_parameter), OK),
    "not protobuf": (b"\xff\xff\xff\xff garbage", INVALID),
    "truncated protobuf": (infer()[:-7], INVALID),
    "no inputs": (messages().ModelInferRequest(model_name=CLS).SerializeToString(), INVALID),
    "no model name": (infer(model=""), INVALID),
    "unknown model": (infer(model="nope"), NOT_FOUND),
    "bad version": (infer(edit=lambda r: setattr(r, "model_version", "x1")), INVALID),
    "unknown datatype": (infer(datatype="FP99"), INVALID),
    "image as FP32": (infer(datatype="FP32", raw=[b"\0" * 4]), INVALID),
    "unknown input": (infer(name="pixels"), INVALID),
    "negative shape": (infer(shape=(-1,)), INVALID),
    "huge shape": (infer(name="input", datatype="FP32", shape=(2**40, 3, 2**20, 2**20)), INVALID),
    "rank 9": (infer(shape=(1,) * 9), INVALID),
    "too many rows": (infer(name="input", datatype="FP32", shape=(1000, 3, 64, 64), raw=[b""]), EXHAUSTED),
    "raw size mismatch": (infer(name="input", datatype="FP32", shape=(1, 3, 64, 64), raw=[b"\0" * 100]), INVALID),
    "NaN tensor": (infer(name="input", datatype="FP32", shape=(1, 3, 64, 64),
                         raw=[np.full((1, 3, 64, 64), np.nan, np.float32).tobytes()]), INVALID),
    "length prefix overruns": (infer(raw=[struct.pack("<I", 10**6) + IMAGE[:10]]), INVALID),
    "length prefix cut": (infer(raw=[b"\x05\x00"]), INVALID),
    "fewer BYTES than the shape": (infer(shape=(2,)), INVALID),
    "more raw entries than inputs": (infer(raw=[prefixed(IMAGE), b"x"]), INVALID),
    "contents and raw": (infer(edit=lambda r: r.inputs[0].contents.bytes_contents.append(IMAGE)), INVALID),
    "typed count mismatch": (infer(raw=[], edit=lambda r: r.inputs[0].contents.bytes_contents.extend([IMAGE] * 2)), INVALID),
    "FP32 in int_contents": (infer(name="input", datatype="FP32", shape=(1, 3, 64, 64), raw=[],
                                   edit=lambda r: r.inputs[0].contents.int_contents.extend([0] * 3 * 64 * 64)), INVALID),
    "not an image": (infer(raw=[prefixed(b"GIF89a" + bytes(20))]), INVALID),
    "unknown output": (infer(edit=lambda r: r.outputs.add(name="nope")), INVALID),
    "same output twice": (infer(edit=lambda r: [r.outputs.add(name="logits") for _ in range(2)]), INVALID),
    "classification on a detector": (infer(model=DET, edit=lambda r: r.outputs.add(name="scores").parameters["classification"]
                                           .__setattr__("int64_param", 2)), INVALID),
    "classification too large": (infer(edit=lambda r: r.outputs.add(name="logits").parameters["classification"]
                                       .__setattr__("int64_param", 99)), INVALID),
    "threshold as text": (infer(model=DET, edit=lambda r: r.parameters["score_threshold"].__setattr__("string_param", "hi")), INVALID),
    "negative timeout": (infer(edit=lambda r: r.parameters["timeout"].__setattr__("int64_param", -5)), INVALID),
}


@pytest.fixture(scope="module")
def server():
    with grpc_server() as running:
        yield running


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as opened:
        yield opened


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_request_gets_its_status_code(channel, server, case: str) -> None:
    data, expected = CASES[case]
    code, answer = raw_call(channel, "ModelInfer", data)
    assert code == expected, answer
    if code != OK:
        assert answer and "internal error" not in answer
    assert server.process.alive()


def test_server_keeps_serving_after_the_hostile_cases(channel, server) -> None:
    for data, _ in CASES.values():
        raw_call(channel, "ModelInfer", data)
    code, answer = raw_call(channel, "ModelInfer", infer())
    response = messages().ModelInferResponse.FromString(answer)
    assert code == OK and [o.name for o in response.outputs][:2] == ["logits", "probabilities"]
    assert len(response.raw_output_contents) == len(response.outputs)
    assert np.frombuffer(response.raw_output_contents[1], "<f4").sum() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("rpc", ["ModelLoad", "ModelUnload", "SystemSharedMemoryStatus", "TraceSetting", "LogSettings"])
def test_other_triton_rpcs_answer_unimplemented(channel, rpc: str) -> None:
    code, details = raw_call(channel, rpc, b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED and rpc in details


def test_streaming_infer_answers_unimplemented(channel) -> None:
    stream = channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([infer()]), timeout=10))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_malformed_requests_of_the_other_rpcs(channel) -> None:
    for rpc in ("ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics", "RepositoryIndex"):
        assert raw_call(channel, rpc, b"\x0a\xff")[0] == INVALID, rpc
    assert raw_call(channel, "ServerLive", b"")[0] == OK


def test_request_id_comes_back_in_trailing_metadata(channel) -> None:
    call = channel.unary_unary(f"/{SERVICE}/ServerMetadata")
    _, state = call.with_call(b"", metadata=(("x-request-id", "abc-123"),), timeout=10)
    assert ("x-request-id", "abc-123") in tuple(state.trailing_metadata())
    _, state = call.with_call(b"", timeout=10)
    assert len(dict(state.trailing_metadata())["x-request-id"]) == 32  # generated
