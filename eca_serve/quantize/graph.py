"""ONNX graph side: find the channel-attention gates, quantize the rest, run a graph on a batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from eca_serve.errors import ConfigError
from eca_serve.export.gates import rewrite_gates

Method = Literal["minmax", "entropy", "percentile"]
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
_POOLS = frozenset({"ReduceMean", "GlobalAveragePool"})
_SIGMOIDS = frozenset({"Sigmoid", "HardSigmoid"})
_VIEWS = frozenset({"Unsqueeze", "Squeeze", "Flatten", "Reshape"})
_GATE_MAX_NODES = 16  # pool -> [view] -> Conv(1d) | Conv, Relu, Conv -> Sigmoid -> views


def attention_nodes(model: Any, attention_outputs: Sequence[str]) -> list[str]:
    """Names of the nodes that compute every gate's weights from its pooled map, kept float by default.

    Each ``attention/<layer>`` output is walked back along first inputs to its pooling node (ECA as
    exported: GlobalAveragePool, Reshape, Conv1d, Sigmoid, Reshape; SE: GlobalAveragePool, Conv, Relu,
    Conv, Sigmoid, Flatten; graphs of older exports: ReduceMean, Unsqueeze/Squeeze) and forward from the
    sigmoid through views to the Mul that scales the feature map. The pool and that Mul are not
    returned: they read and write the full feature map, and quantized they run on the int8 map
    (QLinearGlobalAveragePool, QLinearMul) while the weights themselves, and the attention outputs,
    stay float.

    Args:
        model: ``onnx.ModelProto``.
        attention_outputs: Graph output names carrying attention weights [N, C].

    Raises:
        ConfigError: an output is not produced by a gate of that shape.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names: list[str] = []
    for output in attention_outputs:
        weights = _walk_back(producer, output)
        sigmoid = next(n for n in weights if n.op_type in _SIGMOIDS)
        names += [n.name for n in weights] + _walk_forward(consumers, sigmoid.output[0], output, {n.name for n in weights})
    return names


def _walk_back(producer: dict[str, Any], output: str) -> list[Any]:
    """The nodes from the attention output back to (not including) its pool."""
    node, found = producer.get(output), []
    while node is not None and len(found) < _GATE_MAX_NODES:
        if node.op_type in _POOLS:
            if any(n.op_type in _SIGMOIDS for n in found):
                return found
            break
        found.append(node)
        node = producer.get(node.input[0])
    raise ConfigError(f"attention output {output!r} does not come from a pool -> sigmoid gate")


def _walk_forward(consumers: dict[str, list[Any]], start: str, output: str, seen: set[str]) -> list[str]:
    """The views between the sigmoid's output ``start`` and the Mul that scales the map (not included)."""
    found, frontier, visited = [], [start], {start}
    while frontier and len(visited) < _GATE_MAX_NODES:
        users = consumers.get(frontier.pop(), [])
        if any(n.op_type == "Mul" for n in users):
            return found
        for node in (n for n in users if n.op_type in _VIEWS and n.output[0] not in visited):
            if node.name not in seen:
                found.append(node.name)
            visited.add(node.output[0])
            frontier.append(node.output[0])
    raise ConfigError(f"attention output {output!r} does not scale a feature map (no Mul found)")


class _Batches:
    """`CalibrationDataReader` over an array [N, 3, H, W] in batches of ``batch_size``."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch_size: int = 16) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: inputs[i:i + batch_size]} for i in range(0, len(inputs), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_graph(source: Path, target: Path, calibration: np.ndarray, *, method: Method = "minmax",
                   attention_outputs: Sequence[str] = (), attention_in_float: bool = True) -> list[str]:
    """Write the static INT8 (QDQ) version of ``source`` to ``target``; returns the nodes kept in float.

    Weights int8 per output channel, activations uint8 per tensor, ranges calibrated on
    ``calibration`` float32 [N, 3, H, W]. The gates of ``attention_outputs`` are first brought to the
    exporter's form (`eca_serve.export.gates`: graphs of older exports have a ReduceMean pool, which
    stays float and costs a transposed, dequantized copy of the map). With ``attention_in_float`` the
    nodes that compute each gate's weights from its pooled map stay float32 (`attention_nodes`):
    quantized (sigmoid output in steps of 1/255) they doubled the error of the first gate of the shipped
    classifier (models/README.md). The pool and the scaling Mul are quantized either way.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {list(METHODS)}")
    prepared = target.with_name(target.stem + ".prep.onnx")
    cache = target.with_name(target.stem + ".ranges.json")
    rewritten = target.with_name(target.stem + ".gates.onnx")
    try:
        gates = onnx.load(str(source))
        rewrite_gates(gates, attention_outputs)
        onnx.save(gates, str(rewritten))
        quant_pre_process(str(rewritten), str(prepared))  # shape inference + folding, as ORT recommends
        model = onnx.load(str(prepared))
        excluded = attention_nodes(model, attention_outputs) if attention_in_float else []
        # Histogram calibrators stack every batch's tensors: batches must share one shape.
        reader = _Batches(model.graph.input[0].name, calibration, 16 if method == "minmax" else 1)
        calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                     "percentile": CalibrationMethod.Percentile}[method]
        if method == "entropy":
            _entropy_ranges(prepared, reader, cache)
        quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate,
                        nodes_to_exclude=excluded or None,
                        calibration_cache_path=str(cache) if method == "entropy" else None)
    finally:
        for scratch in (rewritten, prepared, cache, cache.with_suffix(".aug.onnx")):
            scratch.unlink(missing_ok=True)
    return excluded


def _entropy_ranges(prepared: Path, reader: _Batches, cache: Path) -> None:
    """Entropy (KL) activation ranges of ``prepared`` written to ``cache`` for ``quantize_static``.

    NOTE: ``quantize_static`` (onnxruntime 1.32) calibrates entropy with 128 histogram bins for 128
    quantized bins, which always keeps the full range: its result equals minmax (measured: the same
    scales on the shipped classifier). TensorRT's 2048 bins for 128 are set here instead.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(prepared, sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                   augmented_model_path=str(cache.with_suffix(".aug.onnx")),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"num_bins": 2048, "num_quantized_bins": 128})
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)


def cpu_session(path: Path, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session with the server's graph optimisations (threads 0 = ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads > 0:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_graph(session: Any, inputs: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Every output of ``session`` on ``inputs`` [N, 3, H, W], concatenated over batches: name -> [N, ...]."""
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    parts = [session.run(names, {input_name: inputs[i:i + batch_size]}) for i in range(0, len(inputs), batch_size)]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}
