"""The exported attention gates: the rewritten form, its parity, and how ONNX Runtime runs it (FP32 and INT8)."""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import eca_serve
from eca_serve.export import ExportOptions, export_model
from eca_serve.export.gates import find_gate, rewrite_gates
from eca_serve.introspect import AttentionOutputs
from eca_serve.models import PreprocessConfig
from eca_serve.quantize.graph import quantize_graph

SMALL = {"num_classes": 3, "widths": [16, 32, 64, 128], "stem_width": 16}


def small_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = eca_serve.create_model(name, **SMALL)
    model.config = model.config.replace(preprocess=PreprocessConfig(input_size=(64, 64), resize=64))
    return model.eval()


@pytest.fixture(scope="module", params=["eca_resnet18", "se_resnet18"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """(name, graph written by export_model, graph as torch exports it) of a small seeded model."""
    name, root = request.param, tmp_path_factory.mktemp(request.param)
    model = small_model(name)
    export_model(model, root / "1", ExportOptions(name=name, formats=("onnx",), check_inputs=[(1, 64, 64), (2, 96, 96)]))
    outputs = ["logits"] + [f"attention/{n}" for n in model.attention_layers] + ["embedding"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(AttentionOutputs(model), (torch.randn(1, 3, 64, 64),), str(root / "torch.onnx"), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=outputs,
                          dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}})
    return name, root / "1" / "model.onnx", root / "torch.onnx"


def attention_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output if o.name.startswith("attention/")]


def run(path: Path | bytes, x: np.ndarray, level: str = "all", optimized: Path | None = None) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                        "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path) if isinstance(path, Path) else path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x})))


def op_counts(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_exported_gates_have_the_rewritten_form(exported) -> None:
    name, path, _ = exported
    model = onnx.load(str(path))
    producer = {out: node for node in model.graph.node for out in node.output}
    layers = attention_names(model)
    assert len(layers) == 8
    counts = op_counts(path)
    # One pool per gate plus the classifier's; no ReduceMean, no Unsqueeze/Squeeze glue left.
    assert counts["GlobalAveragePool"] == 9 and not {"ReduceMean", "Unsqueeze", "Squeeze"} & set(counts)
    for layer in layers:
        chain, node = [], producer[layer]
        while node.op_type != "GlobalAveragePool":
            chain.insert(0, node.op_type)
            node = producer[node.input[0]]
        expected = ["Reshape", "Conv", "Sigmoid", "Reshape"] if name.startswith("eca") else ["Conv", "Relu", "Conv", "Sigmoid", "Flatten"]
        assert chain == expected
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    scales = {producer[n.input[1]].op_type for n in muls}
    assert len(muls) == 8 and scales == ({"Reshape"} if name.startswith("eca") else {"Sigmoid"})
    assert rewrite_gates(model, layers) == 0  # already in the rewritten form


def test_rewritten_graph_equals_the_torch_export_and_eager(exported) -> None:
    name, path, raw = exported
    x = np.random.default_rng(0).standard_normal((3, 3, 80, 72), dtype=np.float32)
    rewritten, original = run(path, x), run(raw, x)
    assert list(rewritten) == list(original)
    for key in original:
        np.testing.assert_allclose(rewritten[key], original[key], atol=2e-6, rtol=0)
    with torch.inference_mode():
        logits, attention = small_model(name).forward_with_attention(torch.from_numpy(x))
    np.testing.assert_allclose(rewritten["logits"], logits.numpy(), atol=1e-4, rtol=0)
    for layer, weights in attention.items():
        np.testing.assert_allclose(rewritten[f"attention/{layer}"], weights.numpy(), atol=1e-6, rtol=0)


def test_graphs_without_a_gate_are_left_alone() -> None:
    torch.manual_seed(0)
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1), onnx.helper.make_node("Sigmoid", ["m"], ["s"]),
         onnx.helper.make_node("Mul", ["x", "s"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 2, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None), onnx.helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, None)]))
    assert find_gate(model.graph, "s") is None and rewrite_gates(model, ["s"]) == 0
    assert [n.op_type for n in model.graph.node] == ["ReduceMean", "Sigmoid", "Mul"]


def test_fp32_runtime_graph_has_no_gate_glue(exported, tmp_path: Path) -> None:
    _, path, raw = exported
    x = np.zeros((1, 3, 64, 64), np.float32)
    run(path, x, optimized=tmp_path / "new.onnx")
    run(raw, x, optimized=tmp_path / "old.onnx")
    new, old = op_counts(tmp_path / "new.onnx"), op_counts(tmp_path / "old.onnx")
    assert not {"Unsqueeze", "Squeeze", "ReduceMean"} & set(new) and old["Unsqueeze"] >= 16
    # NCHWc layout changes (ReorderInput/ReorderOutput) around the feature maps are no more than before.
    assert new["ReorderInput"] <= old["ReorderInput"]


def test_int8_graph_pools_and_scales_the_int8_map_and_keeps_weights_float(exported, tmp_path: Path) -> None:
    name, path, raw = exported
    calibration = np.random.default_rng(1).standard_normal((16, 3, 64, 64), dtype=np.float32)
    layers = attention_names(onnx.load(str(path)))
    for source, target in ((path, tmp_path / "new.onnx"), (raw, tmp_path / "old.onnx")):
        excluded = quantize_graph(source, target, calibration, attention_outputs=layers)
        kinds = collections.Counter(n.op_type for n in onnx.load(str(target)).graph.node if n.name in set(excluded))
        assert kinds["Sigmoid"] == 8 and not {"Mul", "GlobalAveragePool", "ReduceMean"} & set(kinds)
    x = calibration[:4]
    new, old = run(tmp_path / "new.onnx", x, optimized=tmp_path / "new.opt.onnx"), run(tmp_path / "old.onnx", x)
    for key in new:  # an older export's graph is brought to the same form before quantizing
        np.testing.assert_allclose(new[key], old[key], atol=1e-5, rtol=0)
    counts = op_counts(tmp_path / "new.opt.onnx")
    assert counts["QLinearGlobalAveragePool"] == 9 and counts["QLinearMul"] == 8
    gate_convs = 8 if name.startswith("eca") else 16  # stay float: the weights' convolutions
    assert counts["QLinearConv"] == op_counts(path)["Conv"] - gate_convs
    assert not {"Mul", "ReduceMean", "QLinearSigmoid"} & set(counts)
    # Attention outputs come from the float sigmoid: more distinct values than a uint8 tensor can hold.
    assert len(np.unique(np.concatenate([new[layer].ravel() for layer in layers]))) > 256
