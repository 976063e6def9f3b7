"""The OpenVINO engine on the shipped models: same answers as ONNX Runtime, served over v1 and v2, chosen per entry."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from eca_serve.errors import ConfigError
from eca_serve.repository import EntryConfig, ServingSpec, read_config
from eca_serve.runtime import BackendOptions, create_backend, stack_outputs
from eca_serve.runtime.engines import check_precision, choose_engine, cpu_flags, default_engine, entry_options, has_bf16

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'eca-serve[openvino]')")

ROOT = Path(__file__).resolve().parents[1]
MODELS, EXAMPLES = ROOT / "models", ROOT / "examples"
CLASSIFIER, INT8, DETECTOR = (MODELS / "shapes_classifier" / "1", MODELS / "shapes_classifier" / "2",
                              MODELS / "shapes_detector" / "1")
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})


def both(folder: Path, **options) -> tuple[object, object, object]:
    config = read_config(folder)
    return config, *(create_backend(folder, config, BackendOptions(kind, "cpu", threads=1, **options))
                     for kind in ("onnxruntime", "openvino"))


def shapes_batch(config: EntryConfig) -> np.ndarray:
    from PIL import Image

    from eca_serve.pipelines.preprocess import preprocess_classification

    files = sorted(EXAMPLES.glob("*.png"))
    return np.stack([preprocess_classification(Image.open(f).convert("RGB"), config.input) for f in files if f.name != "scene.png"])


@pytest.mark.parametrize("folder", [CLASSIFIER, INT8], ids=["fp32", "qdq_int8"])
def test_classifier_outputs_match_onnxruntime(folder: Path) -> None:
    config, ort, ov = both(folder)
    batch = shapes_batch(config)
    a, b = stack_outputs(ort.infer(batch)), stack_outputs(ov.infer(batch))
    assert sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape for k in a)
    assert (a["logits"].argmax(1) == b["logits"].argmax(1)).all()
    fp32 = config.precision == "fp32"
    softmax = [np.exp(x["logits"] - x["logits"].max(1, keepdims=True)) for x in (a, b)]
    probs = [s / s.sum(1, keepdims=True) for s in softmax]
    assert np.abs(probs[0] - probs[1]).max() < (1e-4 if fp32 else 0.05)
    attention = [k for k in a if k.startswith("attention/")]
    assert attention and max(np.abs(a[k] - b[k]).max() for k in attention) < (1e-4 if fp32 else 0.05)
    assert ov.kind == "openvino" and ov.device == "cpu"


def test_detector_finds_the_same_objects_on_the_example_scene() -> None:
    from PIL import Image

    from eca_serve.pipelines.preprocess import preprocess_detection

    config, ort, ov = both(DETECTOR)
    image = preprocess_detection(Image.open(EXAMPLES / "scene.png").convert("RGB"), config.input)
    a, b = ort.infer(image[None])[0], ov.infer(image[None])[0]
    keep_a, keep_b = a["scores"] >= 0.5, b["scores"] >= 0.5
    assert keep_a.sum() >= 1 and keep_a.sum() == keep_b.sum()
    assert (a["labels"][keep_a] == b["labels"][keep_b]).all() and a["labels"].dtype == b["labels"].dtype
    assert np.abs(a["boxes"][keep_a] - b["boxes"][keep_b]).max() < 1e-2
    attention = [k for k in a if k.startswith("attention/")]
    assert attention and max(np.abs(a[k] - b[k]).max() for k in attention) < 1e-4


def test_load_aware_pair_and_cache_dir(tmp_path: Path) -> None:
    config = read_config(CLASSIFIER)
    options = BackendOptions("openvino", "cpu", threads=1, solo_threads=2, cache_dir=str(tmp_path))
    backend = create_backend(CLASSIFIER, config, options)
    assert len(backend.variants()) == 2
    out = stack_outputs(backend.infer(shapes_batch(config)[:2]))
    assert out["logits"].shape == (2, config.num_classes)
    assert any((tmp_path / "shapes_classifier-1").iterdir()), "no compiled blob cached"


def test_served_over_v1_and_v2_with_engine_openvino(tmp_path: Path) -> None:
    from eca_serve.settings import Settings
    from tests.serving_utils import running_server

    shutil.copytree(CLASSIFIER, tmp_path / "shapes_classifier" / "1")
    settings = Settings(model_repository=tmp_path, backend="openvino", grpc_port=0, ui=False)
    with running_server(settings) as (base, _):
        with (EXAMPLES / "star.png").open("rb") as f:
            v1 = httpx.post(f"{base}/v1/models/shapes_classifier/classify", files={"file": f}, timeout=60)
        assert v1.status_code == 200, v1.text
        assert v1.json()["results"][0]["predictions"][0]["label"] == "star"
        assert httpx.get(f"{base}/v1/models/shapes_classifier", timeout=30).json()["backend"] == "openvino"
        x = shapes_batch(read_config(CLASSIFIER))[:1]
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        v2 = httpx.post(f"{base}/v2/models/shapes_classifier/infer", json=body, timeout=60)
        assert v2.status_code == 200, v2.text
        names = {o["name"] for o in v2.json()["outputs"]}
        assert {"logits", "probabilities"} <= names and any(n.startswith("attention/") for n in names)
        assert httpx.get(f"{base}/v2/models/shapes_classifier", timeout=30).json()["platform"] == "openvino_onnx"


def test_bf16_is_refused_with_a_warning_on_a_cpu_without_it(caplog: pytest.LogCaptureFixture) -> None:
    if has_bf16(cpu_flags()):
        pytest.skip("this CPU computes bf16 (AMX or AVX512_BF16)")
    with caplog.at_level(logging.WARNING, logger="eca_serve.runtime.engines"):
        assert check_precision("openvino", "bf16", "fp32") == "fp32"
    assert "neither AMX nor AVX512_BF16" in caplog.text and "running FP32" in caplog.text
    with pytest.raises(ConfigError, match="bf16 needs the openvino engine"):
        check_precision("onnxruntime", "bf16", "fp32")
    with pytest.raises(ConfigError, match="INT8 entry"):
        check_precision("openvino", "int8", "fp32")


def test_default_rule_is_a_function_of_cpu_flags() -> None:
    assert default_engine("cpu", AVX2, openvino_available=True) == "onnxruntime"
    assert default_engine("cpu", AVX2 | {"avx512f"}, openvino_available=True) == "openvino"
    assert default_engine("cpu", AVX2 | {"amx_bf16", "amx_tile"}, openvino_available=True) == "openvino"
    assert default_engine("cpu", AVX2 | {"avx512f"}, openvino_available=False) == "onnxruntime"
    assert default_engine("cuda:0", AVX2 | {"amx_bf16"}, openvino_available=True) == "onnxruntime"
    assert has_bf16(frozenset({"avx512_bf16"})) and not has_bf16(AVX2 | {"avx512f"})
    assert choose_engine("onnxruntime", "openvino", "cpu")[0] == "onnxruntime"  # the command line wins
    assert choose_engine("auto", "openvino", "cpu")[0] == "openvino"


def test_serving_block_names_the_engine_and_validates_it() -> None:
    raw = json.loads((CLASSIFIER / "config.json").read_text())
    raw["serving"] = {"device": "cpu", "engine": "openvino", "precision": "fp32", "max_batch_size": 4}
    config = EntryConfig.model_validate(raw)
    assert config.serving.fields_for("cpu") == {"max_batch_size": 4}  # engine/precision are not batching fields
    assert entry_options(BackendOptions("auto", "cpu"), config).kind == "openvino"
    assert entry_options(BackendOptions("onnxruntime", "cpu"), config).kind == "onnxruntime"
    assert entry_options(BackendOptions("auto", "cuda"), config).kind != "openvino"  # a cpu block, served on cuda
    with pytest.raises(ValidationError, match="engine"):
        ServingSpec(engine="tensorrt")
    with pytest.raises(ValidationError, match="precision"):
        ServingSpec(precision="fp8")


def test_a_bad_engine_in_config_json_is_a_clear_config_error(tmp_path: Path) -> None:
    from eca_serve.repository import parse_config

    folder = tmp_path / "shapes_classifier" / "1"
    shutil.copytree(CLASSIFIER, folder)
    raw = json.loads((folder / "config.json").read_text())
    raw["serving"]["engine"] = "tensorrt"
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"serving.engine(.|\n)*'onnxruntime', 'openvino' or 'auto'"):
        parse_config(folder)


def test_recommend_switches_engine_only_beyond_the_noise() -> None:
    from eca_serve.cli.profile_entry import Cell, recommend

    def measured(ov_rate: float) -> list[Cell]:
        return [Cell(1, 1, 100.0, 10.0), Cell(1, 1, ov_rate, 9.0, engine="openvino")]

    assert recommend(measured(104.0), "cpu").engine == "onnxruntime"  # within 5%: keep the baseline
    block = recommend(measured(140.0), "cpu")
    assert (block.engine, block.precision, block.max_batch_size) == ("openvino", "fp32", 1)


def test_profile_recommend_write_measures_both_engines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eca_serve.cli import main

    shutil.copytree(CLASSIFIER, tmp_path / "shapes_classifier" / "1")
    args = ["profile", "shapes_classifier:1", "--recommend", "--write", "--model-repository", str(tmp_path),
            "--seconds", "0.05", "--batch-sizes", "1", "--instance-counts", "1", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert {(c["engine"], c["precision"]) for c in report["cells"]} >= {("onnxruntime", "fp32"), ("openvino", "fp32")}
    serving = read_config(tmp_path / "shapes_classifier" / "1").serving
    assert serving.engine in ("onnxruntime", "openvino") and serving.precision == "fp32"


def test_a_bf16_choice_writes_its_accuracy_report(tmp_path: Path) -> None:
    from eca_serve.cli.profile_engines import BF16_REPORT, write_reports

    folder = tmp_path / "shapes_classifier" / "1"
    shutil.copytree(CLASSIFIER, folder)
    config = read_config(folder)
    assert write_reports(folder, config, ServingSpec(precision="fp32")) is None
    report = json.loads(write_reports(folder, config, ServingSpec(engine="openvino", precision="bf16")).read_text())
    assert report["images"] == 400 and report["cpu_has_bf16"] == has_bf16(cpu_flags())
    assert report["top1_fp32"] >= 95.0 and report["agreement"] >= 99.0 and report["max_abs_attention_diff"] < 0.05
    assert (folder / BF16_REPORT).exists()
