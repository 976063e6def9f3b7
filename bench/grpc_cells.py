"""The gRPC cells of ``serve_bench.py``: two clients x two input kinds, measured like its HTTP cells.

Input kinds (one image per request, cycling through the photos):
    ``jpeg``: the encoded file as the BYTES ``image`` input [1].
    ``tensor``: the photo decoded and preprocessed by the model's own functions, sent as its FP32
        ``input`` [1, 3, H, W] in ``raw_input_contents`` (what the server would have made of the JPEG).

Clients:
    ``tc``: ``tritonclient.grpc.InferenceServerClient``, one per caller thread, as most users call
        Triton; it builds, serializes and parses protobuf messages in Python on every call.
    ``lean``: one ``grpc.aio`` channel calling ModelInfer with requests serialized once and answers
        left as bytes (identity serializers), the way Triton's C++ ``perf_analyzer`` keeps its own
        cost low; every answer's status is checked and one answer per cell is parsed.

Both ask for the ``logits`` output only. A cell's result is a `loadgen.LoadResult` whose statuses are
gRPC code names, with the client's and the server's CPU seconds over the measured window.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from loadgen import LoadResult, process_cpu_s

METHOD = "/inference.GRPCInferenceService/ModelInfer"
KINDS = ("jpeg", "tensor")
CLIENTS = ("tc", "lean")
OUTPUT = "logits"
# Room for a 12-megapixel JPEG or a large tensor both ways (grpc's default is 4 MiB).
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]

Cell = Callable[[int, float, float], LoadResult]
"""``cell(concurrency, seconds, warmup_s)`` measures one load."""


def cell_label(client: str, kind: str) -> str:
    """The endpoint column of a gRPC row, e.g. ``grpc-tensor/lean``."""
    return f"grpc-{kind}/{client}"


def grpc_cells(address: str, root: Path, name: str, photos: list[bytes], server_pid: int | None,
               kinds: tuple[str, ...] = KINDS, clients: tuple[str, ...] = CLIENTS) -> dict[str, Cell]:
    """Every (client, kind) cell for model ``name`` served at ``address``, by `cell_label`."""
    cells: dict[str, Cell] = {}
    for kind in kinds:
        requests = infer_requests(root, name, kind, photos)
        for client in clients:
            if client == "tc":
                cells[cell_label(client, kind)] = _tc_cell(address, requests, server_pid)
            else:
                payloads = [r.SerializeToString() for r in requests]
                cells[cell_label(client, kind)] = _lean_cell(address, payloads, server_pid)
    return cells


def _tc_cell(address: str, requests: list, server_pid: int | None) -> Cell:
    return lambda c, seconds, warmup_s: tritonclient_load(address, requests, c, seconds, warmup_s, server_pid)


def _lean_cell(address: str, payloads: list[bytes], server_pid: int | None) -> Cell:
    return lambda c, seconds, warmup_s: asyncio.run(lean_load(address, payloads, c, seconds, warmup_s, server_pid))


def infer_requests(root: Path, name: str, kind: str, photos: list[bytes]) -> list:
    """One ``ModelInferRequest`` (tritonclient's message class) per photo, as tritonclient builds it."""
    from tritonclient.grpc import service_pb2

    requests = []
    for photo in photos:
        request = service_pb2.ModelInferRequest(model_name=name)
        if kind == "jpeg":
            request.inputs.add(name="image", datatype="BYTES", shape=[1])
            request.raw_input_contents.append(len(photo).to_bytes(4, "little") + photo)
        else:
            tensor = preprocessed(root, name, photo)[None]
            request.inputs.add(name="input", datatype="FP32", shape=list(tensor.shape))
            request.raw_input_contents.append(tensor.tobytes())
        request.outputs.add(name=OUTPUT)
        requests.append(request)
    return requests


def preprocessed(root: Path, name: str, photo: bytes) -> np.ndarray:
    """``photo`` decoded and preprocessed by the model's pipeline functions: float32 [3, H, W]."""
    from eca_serve.pipelines.images import DecodeLimits, decode_image
    from eca_serve.pipelines.preprocess import decode_target, preprocess_classification
    from eca_serve.repository import read_config

    config = read_config(root / name / "1")
    decoded = decode_image(photo, limits=DecodeLimits(), target=decode_target(config.input))
    return np.ascontiguousarray(preprocess_classification(decoded, config.input), dtype=np.float32)


class Window:
    """The measured window of a cell: answers recorded only between ``start`` and ``end``, and the CPU
    seconds this process and the server spent in it."""

    def __init__(self, seconds: float, warmup_s: float, server_pid: int | None) -> None:
        self.start = time.perf_counter() + warmup_s
        self.end = self.start + seconds
        self.result = LoadResult(seconds=seconds)
        self.server_pid = server_pid
        self.lock = threading.Lock()
        self._cpu = (0.0, 0.0)

    def record(self, began: float, ended: float, status: str) -> None:
        if self.start <= ended <= self.end:
            with self.lock:
                self.result.latencies.append(ended - began)
                self.result.statuses[status] = self.result.statuses.get(status, 0) + 1

    def open(self) -> None:
        """Called at ``start``: CPU counters now."""
        self._cpu = (time.process_time(), process_cpu_s(self.server_pid) if self.server_pid else 0.0)

    def close(self) -> None:
        """Called at ``end``: CPU spent since `open`."""
        self.result.client_cpu_s = time.process_time() - self._cpu[0]
        if self.server_pid:
            self.result.server_cpu_s = process_cpu_s(self.server_pid) - self._cpu[1]


def tritonclient_load(address: str, requests: list, concurrency: int, seconds: float, warmup_s: float,
                      server_pid: int | None = None) -> LoadResult:
    """``concurrency`` threads, each with its own ``InferenceServerClient``, calling ``infer`` back to back."""
    import tritonclient.grpc as grpcclient

    window = Window(seconds, warmup_s, server_pid)
    calls = [_tc_arguments(grpcclient, r) for r in requests]

    def caller(offset: int) -> None:
        client = grpcclient.InferenceServerClient(address, channel_args=CHANNEL_OPTIONS)
        k = offset
        try:
            while (began := time.perf_counter()) < window.end:
                inputs, outputs = calls[k % len(calls)]
                k += 1
                try:
                    client.infer(requests[0].model_name, inputs, outputs=outputs).as_numpy(OUTPUT)
                    status = "OK"
                except grpcclient.InferenceServerException as exc:
                    status = str(exc.status() or "error").removeprefix("StatusCode.")
                window.record(began, time.perf_counter(), status)
        finally:
            client.close()

    _run_threads(caller, concurrency, window)
    return window.result


def _tc_arguments(grpcclient: Any, request: Any) -> tuple[list, list]:
    """The ``InferInput``/``InferRequestedOutput`` objects that make tritonclient send ``request``."""
    spec = request.inputs[0]
    item = grpcclient.InferInput(spec.name, list(spec.shape), spec.datatype)
    raw = request.raw_input_contents[0]
    if spec.datatype == "BYTES":
        item.set_data_from_numpy(np.array([raw[4:]], dtype=object))
    else:
        item.set_data_from_numpy(np.frombuffer(raw, np.float32).reshape(list(spec.shape)))
    return [item], [grpcclient.InferRequestedOutput(OUTPUT)]


def _run_threads(caller: Callable[[int], None], concurrency: int, window: Window) -> None:
    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, window.start - time.perf_counter()))
    window.open()
    time.sleep(max(0.0, window.end - time.perf_counter()))
    window.close()
    for thread in threads:
        thread.join()


async def lean_load(address: str, payloads: list[bytes], concurrency: int, seconds: float, warmup_s: float,
                    server_pid: int | None = None, method: str = METHOD) -> LoadResult:
    """``concurrency`` coroutines on one channel sending pre-serialized requests; answers stay bytes.

    Another ``method`` than ModelInfer (e.g. ServerLive, which ignores the request's fields) measures
    the transport alone."""
    import grpc

    window = Window(seconds, warmup_s, server_pid)
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(method)  # no serializers: bytes in, bytes out
        if method == METHOD:
            check_answer(await call(payloads[0]))

        async def caller(offset: int) -> None:
            k = offset
            while (began := time.perf_counter()) < window.end:
                payload = payloads[k % len(payloads)]
                k += 1
                try:
                    await call(payload)
                    status = "OK"
                except grpc.aio.AioRpcError as exc:
                    status = exc.code().name
                window.record(began, time.perf_counter(), status)

        tasks = [asyncio.ensure_future(caller(i)) for i in range(concurrency)]
        await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
        window.open()
        await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
        window.close()
        await asyncio.gather(*tasks)
    return window.result


def check_answer(answer: bytes) -> None:
    """Raise unless ``answer`` is a ModelInferResponse holding the requested output's bytes."""
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse.FromString(answer)
    if [o.name for o in response.outputs] != [OUTPUT] or not response.raw_output_contents[0]:
        raise RuntimeError(f"unexpected ModelInfer answer: {response.outputs}")
