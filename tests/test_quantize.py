"""`eca-serve quantize`: INT8 entries of the shipped classifier, their accuracy report, refusal and serving."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from PIL import Image

from eca_serve.cli import main
from eca_serve.data import write_imagefolder
from eca_serve.errors import ConfigError
from eca_serve.pipelines.images import DecodeLimits, decode_image
from eca_serve.pipelines.preprocess import decode_target, preprocess_classification
from eca_serve.quantize.graph import attention_nodes
from eca_serve.quantize.report import softmax
from eca_serve.pipelines.servable import servable_entries, unservable_reason
from eca_serve.repository import list_entries, read_config
from eca_serve.settings import Settings
from tests.serving_utils import running_server

ROOT = Path(__file__).resolve().parents[1]
NAME = "shapes_classifier"
http = httpx.Client(timeout=60)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(calibration, eval): 32 training-distribution images (seed 1), 160 held-out ones (seed 2)."""
    root = tmp_path_factory.mktemp("shapes")
    write_imagefolder(root / "calibration", 32, seed=1)
    write_imagefolder(root / "eval", 160, seed=2)
    return root / "calibration", root / "eval"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, images: tuple[Path, Path]) -> Path:
    """A copy of the shipped FP32 classifier (version 1) and its INT8 version 2 made by the CLI."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(ROOT / "models" / NAME / "1", root / NAME / "1")
    calibration, held_out = images
    assert main(["quantize", NAME, "--model-repository", str(root), "--calibration", str(calibration),
                 "--eval", str(held_out), "--json"]) == 0
    return root


def preprocessed(config, files: list[Path]) -> np.ndarray:
    """The server's preprocessing of image files: float32 [N, 3, H, W]."""
    target = decode_target(config.input)
    return np.stack([preprocess_classification(decode_image(f.read_bytes(), limits=DecodeLimits(), target=target),
                                               config.input) for f in files])


def run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x})))


def test_int8_entry_is_complete_and_its_report_matches_a_recomputation(repository: Path, images) -> None:
    config = read_config(repository / NAME / "2")  # verifies the sha256 of every artifact
    report = config.quantization
    assert config.precision == "int8" and set(config.artifacts) == {"onnx"} and report.parent_version == 1
    assert config.metrics["quantization"] == report.model_dump(mode="json") and config.metrics["top1"] == report.top1_int8
    assert report.accepted and report.attention_in_float and report.calibration_images == 32
    files = sorted(images[1].rglob("*.png"))
    labels = np.array([int(f.parent.name[:2]) for f in files])
    x = preprocessed(config, files)
    fp32, int8 = run(repository / NAME / "1" / "model.onnx", x), run(repository / NAME / "2" / "model.onnx", x)
    top1 = {k: 100.0 * np.mean(o["logits"].argmax(1) == labels) for k, o in (("fp32", fp32), ("int8", int8))}
    assert report.eval_images == len(files) == 160
    assert report.top1_fp32 == pytest.approx(top1["fp32"]) and report.top1_int8 == pytest.approx(top1["int8"])
    assert report.top1_drop == pytest.approx(top1["fp32"] - top1["int8"]) and report.top1_drop <= 0.5
    assert report.agreement == pytest.approx(100.0 * np.mean(fp32["logits"].argmax(1) == int8["logits"].argmax(1)))
    prob_diff = np.abs(softmax(int8["logits"]) - softmax(fp32["logits"])).max()
    assert report.max_abs_prob_diff == pytest.approx(prob_diff, abs=1e-6) and prob_diff > 0  # it is INT8
    for layer in config.attention:
        diff = np.abs(int8[layer.output] - fp32[layer.output]).max()
        assert report.attention_diff_per_layer[layer.output] == pytest.approx(diff, abs=1e-6)
    assert report.max_abs_attention_diff == pytest.approx(max(report.attention_diff_per_layer.values()))


def test_int8_keeps_the_embedding_output_in_float(repository: Path, images) -> None:
    parent, config = read_config(repository / NAME / "1"), read_config(repository / NAME / "2")
    assert config.embedding == parent.embedding and parent.embedding is not None
    assert config.outputs[-1].name == "embedding" and config.outputs[-1].shape == [-1, parent.embedding.dim]
    x = preprocessed(config, sorted(images[1].rglob("*.png"))[:40])
    fp32, int8 = (run(repository / NAME / v / "model.onnx", x)["embedding"] for v in ("1", "2"))
    assert int8.dtype == np.float32 and int8.shape == fp32.shape == (40, parent.embedding.dim)
    cosine = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert 0.9 < cosine.min() and not np.array_equal(fp32, int8)  # quantized, pointing the same way


def test_the_report_measures_the_same_int8_graph_on_openvino(repository: Path, images) -> None:
    ov = pytest.importorskip("openvino")
    config = read_config(repository / NAME / "2")
    report, on_openvino = config.quantization, config.quantization.openvino
    assert on_openvino is not None and on_openvino.engine == "openvino" and on_openvino.version == ov.__version__
    files = sorted(images[1].rglob("*.png"))
    labels = np.array([int(f.parent.name[:2]) for f in files])
    x = preprocessed(config, files)
    fp32 = run(repository / NAME / "1" / "model.onnx", x)
    compiled = ov.Core().compile_model(str(repository / NAME / "2" / "model.onnx"), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    parts = [compiled(x[i:i + 32]) for i in range(0, len(x), 32)]
    int8 = {name: np.concatenate([p[compiled.output(name)] for p in parts]) for name in fp32}
    top1 = 100.0 * np.mean(int8["logits"].argmax(1) == labels)
    assert on_openvino.top1_int8 == pytest.approx(top1) and on_openvino.top1_drop == pytest.approx(report.top1_fp32 - top1)
    assert on_openvino.agreement == pytest.approx(100.0 * np.mean(fp32["logits"].argmax(1) == int8["logits"].argmax(1)))
    for layer in config.attention:
        diff = np.abs(int8[layer.output] - fp32[layer.output]).max()
        assert on_openvino.attention_diff_per_layer[layer.output] == pytest.approx(diff, abs=1e-5)
    assert on_openvino.max_abs_attention_diff > 0  # OpenVINO ran it as INT8, not as the FP32 parent
    assert report.accepted == (max(report.top1_drop, on_openvino.top1_drop) <= report.max_drop)


def test_the_quantization_command_shows_the_report(repository: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["quantization", f"{NAME}:2", "--model-repository", str(repository), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == read_config(repository / NAME / "2").quantization.model_dump(mode="json")
    assert main(["quantization", f"{NAME}:1", "--model-repository", str(repository)]) == 2  # FP32: no report


def test_attention_gates_stay_float_unless_asked(repository: Path, images, tmp_path: Path) -> None:
    float_gates = onnx.load(str(repository / NAME / "2" / "model.onnx"))
    producers = {o: n.op_type for n in float_gates.graph.node for o in n.output}
    sigmoids = [n for n in float_gates.graph.node if n.op_type == "Sigmoid"]
    assert len(sigmoids) == 8 and all(producers[n.input[0]] == "Conv" for n in sigmoids)  # no DequantizeLinear
    assert main(["quantize", f"{NAME}:1", "--model-repository", str(repository), "--calibration", str(images[0]),
                 "--eval", str(images[1]), "--out-version", "3", "--quantize-attention"]) == 0
    quantized = read_config(repository / NAME / "3")
    assert not quantized.quantization.attention_in_float and quantized.quantization.excluded_nodes == []
    x = preprocessed(quantized, sorted(images[1].rglob("*.png"))[:40])
    int8_float_gates, int8_gates = run(repository / NAME / "2" / "model.onnx", x), run(repository / NAME / "3" / "model.onnx", x)
    # A uint8 sigmoid output can take at most 256 values; a float one takes as many as there are weights.
    layer = quantized.attention[-1].output
    assert len(np.unique(int8_gates[layer])) <= 256 < len(np.unique(int8_float_gates[layer]))
    shutil.rmtree(repository / NAME / "3")


def test_a_drop_beyond_max_drop_writes_only_the_report(repository: Path, images, tmp_path: Path) -> None:
    # Calibrating on one flat grey image sets every activation range to that image's: held-out shapes
    # then saturate and the top-1 collapses, far beyond the default 0.5-point bound.
    (tmp_path / "grey").mkdir()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp_path / "grey" / "grey.png")
    assert main(["quantize", NAME, "--model-repository", str(repository), "--calibration", str(tmp_path / "grey"),
                 "--eval", str(images[1]), "--out-version", "4"]) == 2
    folder = repository / NAME / "4"
    report = json.loads((folder / "quantization.json").read_text())
    assert not report["accepted"] and report["top1_drop"] > 0.5 and report["calibration_images"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["quantization.json"]
    assert [v for n, v, _ in list_entries(repository) if n == NAME] == [1, 2]
    shutil.rmtree(folder)


def test_quantize_refuses_int8_parents_taken_versions_and_unlabelled_folders(repository: Path, images) -> None:
    args = ["--model-repository", str(repository), "--calibration", str(images[0])]
    assert main(["quantize", f"{NAME}:2", *args]) == 2  # INT8 already
    assert main(["quantize", NAME, *args, "--out-version", "2"]) == 2  # taken
    assert main(["quantize", "absent", *args]) == 2


def test_int8_entries_are_served_on_cpu_by_onnxruntime_or_openvino_only(repository: Path) -> None:
    int8, fp32 = read_config(repository / NAME / "2"), read_config(repository / NAME / "1")
    assert unservable_reason(int8, "cpu") is None and unservable_reason(fp32, "cuda:0") is None
    assert f"INT8, served on CPU only, not on cuda:0; serve its FP32 parent {NAME}:1" in unservable_reason(int8, "cuda:0")
    assert "serve it with onnxruntime or openvino" in unservable_reason(int8, "cpu", backend="torchscript")
    assert unservable_reason(int8, "cpu", backend="openvino") is None and unservable_reason(int8, "cpu", backend="auto") is None
    entries = list_entries(repository)
    assert [e[:2] for e in servable_entries(entries, "cuda", "onnxruntime")] == [(NAME, 1)]
    assert [e[:2] for e in servable_entries(entries, "cpu", "eager")] == [(NAME, 1)]
    assert servable_entries(entries, "cpu", "onnxruntime") == entries
    # The serving path may import this check: it must stay light.
    code = "import sys, eca_serve.pipelines.servable; print(sorted({'onnxruntime', 'torch', 'onnx'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_attention_nodes_are_each_gates_weights_between_its_pool_and_its_scaling_mul(tmp_path: Path) -> None:
    import torch

    from eca_serve.introspect import AttentionOutputs
    from eca_serve.models import create_model

    config = read_config(ROOT / "models" / NAME / "1", verify=False)
    # the graph as older exports wrote it (torch's own export, no gate rewrite): ReduceMean, Unsqueeze glue
    net = create_model("eca_resnet18", weights=ROOT / "models" / NAME / "1" / "weights.safetensors")
    names = ["logits", *[a.output for a in config.attention], "embedding"]
    torch.onnx.export(AttentionOutputs(net), (torch.randn(1, 3, 64, 64),), str(tmp_path / "torch.onnx"), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=names)
    model = onnx.load(str(tmp_path / "torch.onnx"))
    names = attention_nodes(model, [a.output for a in config.attention])
    kinds = [n.op_type for n in model.graph.node if n.name in names]
    assert {k: kinds.count(k) for k in set(kinds)} == {"Unsqueeze": 24, "Conv": 8, "Sigmoid": 8, "Squeeze": 8}
    with pytest.raises(ConfigError, match="does not come from a pool -> sigmoid gate"):
        attention_nodes(model, ["logits"])


def test_served_int8_answers_equal_onnxruntime_on_the_int8_graph(repository: Path) -> None:
    config = read_config(repository / NAME / "2")
    data = (ROOT / "examples" / "star.png").read_bytes()
    x = preprocessed(config, [ROOT / "examples" / "star.png"])
    expected = run(repository / NAME / "2" / "model.onnx", x)
    probs = softmax(expected["logits"])[0]
    with running_server(Settings(model_repository=repository)) as (base, _):
        detail = http.get(f"{base}/v1/models/{NAME}").json()
        assert detail["version"] == 2 and detail["metrics"]["quantization"]["parent_version"] == 1
        v1 = http.post(f"{base}/v1/models/{NAME}/attention?top_k=8", content=data,
                       headers={"content-type": "image/png"}).json()["results"][0]
        client = triton.InferenceServerClient(base.removeprefix("http://"), network_timeout=60)
        item = triton.InferInput("image", [1], "BYTES")
        item.set_data_from_numpy(np.array([data], dtype=object))
        v2 = client.infer(NAME, [item], model_version="2")
        fp32 = http.post(f"{base}/v1/models/{NAME}/attention?version=1&top_k=1", content=data,
                         headers={"content-type": "image/png"}).json()["results"][0]
    assert [p["index"] for p in v1["predictions"]] == list(np.argsort(-probs))
    np.testing.assert_allclose([p["score"] for p in v1["predictions"]], np.sort(probs)[::-1], atol=1e-6)
    np.testing.assert_allclose(v2.as_numpy("probabilities")[0], probs, atol=1e-6)
    for layer in v1["layers"]:
        output = f"attention/{layer['name']}"
        np.testing.assert_allclose(layer["weights"], expected[output][0], atol=1e-6)
        np.testing.assert_allclose(v2.as_numpy(output)[0], expected[output][0], atol=1e-6)
    for int8_layer, fp32_layer in zip(v1["layers"], fp32["layers"]):
        error = np.abs(np.subtract(int8_layer["weights"], fp32_layer["weights"])).max()
        assert error <= config.quantization.attention_diff_per_layer[f"attention/{int8_layer['name']}"]
    assert v1["predictions"][0]["label"] == fp32["predictions"][0]["label"] == "star"


def test_an_se_model_keeps_its_gates_float_and_unlabelled_images_bound_the_disagreement(tmp_path: Path, images) -> None:
    import torch

    import eca_serve
    from eca_serve.export import ExportOptions, export_model
    from eca_serve.models import PreprocessConfig

    torch.manual_seed(0)
    model = eca_serve.create_model("se_resnet18", num_classes=3, widths=[16, 32, 64, 128], stem_width=16)
    model.config = model.config.replace(preprocess=PreprocessConfig(input_size=(64, 64), resize=64))
    export_model(model, tmp_path / "se" / "1", ExportOptions(name="se", formats=("onnx",), check_inputs=[(1, 64, 64)]))
    # Shapes class folders name none of this model's categories: the images count as unlabelled.
    assert main(["quantize", "se", "--model-repository", str(tmp_path), "--calibration", str(images[0]),
                 "--max-drop", "100"]) == 0
    report = read_config(tmp_path / "se" / "2").quantization
    assert report.top1_fp32 is None and report.top1_drop == pytest.approx(100 - report.agreement)
    assert report.eval_images == report.calibration_images == 32
    graph = onnx.load(str(tmp_path / "se" / "1" / "model.onnx"))
    kinds = [n.op_type for n in graph.graph.node if n.name in set(report.excluded_nodes)]
    assert kinds.count("Sigmoid") == kinds.count("Relu") == kinds.count("Flatten") == 8 and kinds.count("Conv") == 16
    assert not {"Mul", "GlobalAveragePool", "ReduceMean"} & set(kinds)  # the map's pool and scaling run int8
