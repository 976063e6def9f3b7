"""The Open Inference Protocol over gRPC against a real server process, driven by the official tritonclient.grpc.

tritonclient registers Triton's own ``inference`` messages in the default protobuf pool; the server's
live in a private pool, so both can be imported here.
"""

from __future__ import annotations

import io
import signal
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from eca_serve.api.v2_codec import deserialize_bytes
from eca_serve.data import ShapesClassification, make_scene
from eca_serve.repository import read_config
from eca_serve.pipelines.images import DecodeLimits, decode_image
from eca_serve.pipelines.preprocess import decode_target, preprocess_classification
from tests.grpc_serving import CLS, DET, MODELS, grpc_server
from tests.hostile_images import jpeg_bytes, png_bytes

LATEST = str(max(int(p.name) for p in (MODELS / CLS).iterdir() if p.name.isdigit()))  # the version that answers by default


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


SHAPES = [png(ShapesClassification(seed=2, length=4, size=64, transform=lambda i: i)[i][0]) for i in range(3)]
SCENE = png(make_scene(7, size=128, num_objects=3).image)


@pytest.fixture(scope="module")
def server():
    with grpc_server() as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> tg.InferenceServerClient:
    return tg.InferenceServerClient(server.address)


def image_input(*images: bytes) -> tg.InferInput:
    item = tg.InferInput("image", [len(images)], "BYTES")
    item.set_data_from_numpy(np.array(images, dtype=object))
    return item


def tensor_input(x: np.ndarray) -> tg.InferInput:
    item = tg.InferInput("input", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    return item


def code_of(call) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status()


def test_health_metadata_config_statistics_and_index_match_http(client, server) -> None:
    http = th.InferenceServerClient(server.base.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(CLS) and client.is_model_ready(DET, "1")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "eca-serve" and {"classification", "statistics"} <= set(meta["extensions"])
    for model in (CLS, DET):
        grpc_meta = client.get_model_metadata(model, as_json=True)
        for tensor in grpc_meta["inputs"] + grpc_meta["outputs"]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]  # JSON of int64 is strings
        assert grpc_meta == http.get_model_metadata(model)
    config = client.get_model_config(CLS, as_json=True)["config"]
    want = http.get_model_config(CLS)
    assert config["max_batch_size"] == want["max_batch_size"] > 0
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == \
           [(t["name"], t["data_type"], t["dims"]) for t in want["input"]]
    assert int(config["dynamic_batching"]["default_queue_policy"]["max_queue_size"]) == \
           want["dynamic_batching"]["default_queue_policy"]["max_queue_size"]
    index = client.get_model_repository_index(as_json=True)["models"]
    assert [(m["name"], m["version"], m["state"]) for m in index] == [(CLS, "1", "READY"), (CLS, LATEST, "READY"), (DET, "1", "READY")]


def test_statistics_count_grpc_inferences(client) -> None:
    before = client.get_inference_statistics(CLS, as_json=True)["model_stats"][0]
    client.infer(CLS, [image_input(SHAPES[0], SHAPES[1])])
    after = client.get_inference_statistics(CLS, LATEST, as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 2
    assert {(s["name"], s["version"]) for s in client.get_inference_statistics(as_json=True)["model_stats"]} == \
        {(CLS, "1"), (CLS, LATEST), (DET, "1")}


def test_top1_agrees_over_grpc_v2_http_and_v1(client, server) -> None:
    http = th.InferenceServerClient(server.base.removeprefix("http://"))
    for data in SHAPES:
        over_grpc = client.infer(CLS, [image_input(data)]).as_numpy("probabilities")
        item = th.InferInput("image", [1], "BYTES")
        item.set_data_from_numpy(np.array([data], dtype=object))
        over_http = http.infer(CLS, [item]).as_numpy("probabilities")
        v1 = httpx.post(f"{server.base}/v1/models/{CLS}/classify", content=data, headers={"content-type": "image/png"}).json()
        np.testing.assert_allclose(over_grpc, over_http, rtol=1e-5, atol=1e-6)
        assert int(over_grpc.argmax()) == v1["results"][0]["predictions"][0]["index"]


def test_float_tensor_input_gives_the_image_result(client) -> None:
    config = read_config(MODELS / CLS / "1")
    rows = np.stack([preprocess_classification(decode_image(d, limits=DecodeLimits(), target=decode_target(config.input)),
                                               config.input) for d in SHAPES[:2]]).astype(np.float32)
    from_tensor = client.infer(CLS, [tensor_input(rows)])
    from_images = client.infer(CLS, [image_input(*SHAPES[:2])])
    np.testing.assert_allclose(from_tensor.as_numpy("logits"), from_images.as_numpy("logits"), rtol=1e-4, atol=1e-4)
    assert from_tensor.as_numpy("attention/layer4.1.eca").shape == (2, 128)
    assert from_tensor.get_output("logits").datatype == "FP32" and from_tensor.get_response().model_version == LATEST


def test_two_images_in_one_request_answer_like_two_requests(client) -> None:
    both = client.infer(CLS, [image_input(SHAPES[0], SHAPES[2])], request_id="pair-1")
    assert both.get_response().id == "pair-1"
    single = [client.infer(CLS, [image_input(d)]).as_numpy("logits")[0] for d in (SHAPES[0], SHAPES[2])]
    np.testing.assert_allclose(both.as_numpy("logits"), np.stack(single), rtol=1e-4, atol=1e-5)


def test_classification_extension(client) -> None:
    result = client.infer(CLS, [image_input(*SHAPES[:2])], outputs=[tg.InferRequestedOutput("probabilities", class_count=3),
                                                                     tg.InferRequestedOutput("logits")])
    classes = result.as_numpy("probabilities")
    assert classes.shape == (2, 3) and result.get_output("probabilities").datatype == "BYTES"
    logits = result.as_numpy("logits")
    categories = read_config(MODELS / CLS / "1").categories
    for row, row_logits in zip(classes, logits):
        score, index, label = row[0].decode().split(":")
        assert int(index) == int(row_logits.argmax()) and label == categories[int(index)] and 0 < float(score) <= 1


def test_detector_parameters_match_http(client, server) -> None:
    http = th.InferenceServerClient(server.base.removeprefix("http://"))
    everything = client.infer(DET, [image_input(SCENE)])
    assert everything.as_numpy("boxes").shape[1] == 4 and len(everything.as_numpy("scores")) >= 2
    parameters = {"score_threshold": 0.5, "max_detections": 1}
    few = client.infer(DET, [image_input(SCENE)], parameters=parameters, priority=1, timeout=20_000_000)
    assert len(few.as_numpy("scores")) == 1 and few.as_numpy("scores")[0] >= 0.5
    item = th.InferInput("image", [1], "BYTES")
    item.set_data_from_numpy(np.array([SCENE], dtype=object))
    over_http = http.infer(DET, [item], parameters=parameters)
    for name in ("boxes", "scores", "labels", "batch_index"):
        np.testing.assert_allclose(few.as_numpy(name), over_http.as_numpy(name), rtol=1e-5, atol=1e-4)
    masks = few.as_numpy("masks")
    assert masks.shape == (1,) and b'"counts"' in masks[0]


def test_errors_map_to_status_codes(client, server) -> None:
    assert code_of(lambda: client.infer("nope", [image_input(SHAPES[0])])) == "StatusCode.NOT_FOUND"
    assert code_of(lambda: client.get_model_metadata("nope")) == "StatusCode.NOT_FOUND"
    assert code_of(lambda: client.infer(CLS, [image_input(b"not an image")])) == "StatusCode.INVALID_ARGUMENT"
    assert code_of(lambda: client.infer(CLS, [image_input(SHAPES[0])], model_version="9")) == "StatusCode.NOT_FOUND"
    assert code_of(lambda: client.infer(CLS, [image_input(*SHAPES[:1] * 17)])) == "StatusCode.RESOURCE_EXHAUSTED"
    assert code_of(lambda: client.infer(CLS, [image_input(SHAPES[0])], client_timeout=0.001)) == "StatusCode.DEADLINE_EXCEEDED"
    assert code_of(lambda: client.load_model(CLS)) == "StatusCode.UNIMPLEMENTED"
    assert client.is_server_ready()


def test_message_limit_is_the_body_limit_not_grpcios_4_mib(client) -> None:
    photo = png_bytes((1700, 1700))  # noise: about 8.7 MB
    assert len(photo) > 8 * 2**20
    assert client.infer(CLS, [image_input(photo)]).as_numpy("logits").shape == (1, 8)
    huge = image_input(b"\x89PNG" + bytes(64 * 2**20))
    assert code_of(lambda: client.infer(CLS, [huge])) == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.infer(CLS, [image_input(SHAPES[0])]).as_numpy("logits").shape == (1, 8)


def test_health_service_and_metrics(client, server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    client.infer(CLS, [image_input(SHAPES[0])])
    text = server.metrics()
    assert f'eca_serve_requests_total{{endpoint="ModelInfer",model="{CLS}",protocol="grpc",status="OK"}}' in text
    assert 'eca_serve_requests_total{endpoint="ModelInfer",model="_unknown",protocol="grpc",status="NOT_FOUND"}' in text


def test_sigterm_drains_grpc_calls_in_flight_then_exits_0() -> None:
    # Each call makes the detector run 12 images one at a time on one instance: seconds of work, so all four
    # are still in flight when SIGTERM arrives (small classifier calls could finish before they are counted).
    busy = [image_input(*[jpeg_bytes((1200, 800), seed=i)] * 12) for i in range(4)]
    settings = {"ECA_SERVE_MAX_BATCH_SIZE": "1", "ECA_SERVE_INSTANCES": "1", "ECA_SERVE_DECODE_THREADS": "1",
                "ECA_SERVE_GRACE_PERIOD_S": "60"}
    with grpc_server(**settings) as running:
        results: list[object] = []

        def call(request) -> None:
            try:
                result = tg.InferenceServerClient(running.address).infer(DET, [request])
                results.append(("answered", len(set(result.as_numpy("batch_index").tolist()) - set(range(12)))))
            except InferenceServerException as exc:
                results.append(exc.status())

        threads = [threading.Thread(target=call, args=(request,)) for request in busy]
        for thread in threads:
            thread.start()
        _wait_inflight(running, 4)  # the HTTP and gRPC in-flight counter is shared
        running.process.process.send_signal(signal.SIGTERM)
        late = tg.InferenceServerClient(running.address)
        assert code_of(lambda: late.infer(CLS, [image_input(SHAPES[0])])) == "StatusCode.UNAVAILABLE"
        with grpc.insecure_channel(running.address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        for thread in threads:
            thread.join(timeout=120)
        assert results == [("answered", 0)] * 4
        assert running.process.process.wait(timeout=60) == 0


def _wait_inflight(running, count: int) -> None:
    """Until ``count`` requests are in flight (the counter HTTP and gRPC share)."""
    _wait(lambda: _inflight(running) >= count, timeout_s=30)


def test_bytes_outputs_are_length_prefixed_raw(client) -> None:
    result = client.infer(CLS, [image_input(SHAPES[0])], outputs=[tg.InferRequestedOutput("logits", class_count=2)])
    raw = result.get_response().raw_output_contents[0]
    assert [s.split(b":")[0] for s in deserialize_bytes(raw, 2)] == [s.split(b":")[0] for s in result.as_numpy("logits")[0]]


def test_inflight_limit_is_shared_with_http_and_cancelled_calls_free_their_slots() -> None:
    # Each busy call makes the detector run 12 images one at a time on one instance: seconds of work, so the
    # three calls are certainly still in flight when the refused requests arrive.
    busy = [image_input(*[jpeg_bytes((1200, 800), seed=i)] * 12) for i in range(3)]
    settings = {"ECA_SERVE_MAX_INFLIGHT_REQUESTS": "3", "ECA_SERVE_MAX_BATCH_SIZE": "1", "ECA_SERVE_INSTANCES": "1",
                "ECA_SERVE_DECODE_THREADS": "1"}
    with grpc_server(**settings) as running:
        client = tg.InferenceServerClient(running.address)
        errors: list[object] = []
        for request in busy:
            client.async_infer(DET, [request], callback=lambda result, error: errors.append(error))
        _wait_inflight(running, 3)
        refused = httpx.post(f"{running.base}/v1/models/{CLS}/classify", content=SHAPES[0], headers={"content-type": "image/png"})
        assert refused.status_code == 503
        assert code_of(lambda: client.infer(CLS, [image_input(SHAPES[0])])) == "StatusCode.RESOURCE_EXHAUSTED"
        assert len(errors) == 0  # the busy calls were in flight all along
        _wait(lambda: len(errors) == 3)
        assert errors == [None] * 3
        calls = [client.async_infer(DET, [request], callback=lambda result, error: None) for request in busy]
        _wait_inflight(running, 3)
        for call in calls:
            call.cancel()
        _wait(lambda: _inflight(running) == 0)
        assert client.infer(CLS, [image_input(SHAPES[0])]).as_numpy("logits").shape == (1, 8)
        assert 'endpoint="ModelInfer",model="shapes_detector",protocol="grpc",status="CANCELLED"' in running.metrics()


def _inflight(running) -> float:
    line = next(l for l in running.metrics().splitlines() if l.startswith("eca_serve_inflight_requests "))
    return float(line.split()[1])


def _wait(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_taken_grpc_port_stops_the_server_before_loading_with_one_line() -> None:
    import socket

    from tests.reliability.serverproc import start_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"exited with 2:\nerror: cannot listen on 127.0.0.1:{port}: Address already in use\n$"):
            start_server(MODELS, env={"ECA_SERVE_GRPC_PORT": str(port), "ECA_SERVE_LOG_LEVEL": "error"})
