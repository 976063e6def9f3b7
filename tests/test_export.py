"""Export of classifiers into the model repository, with parity checked against eager."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import eca_serve
from eca_serve.cli import main
from eca_serve.errors import ConfigError
from eca_serve.export import ExportOptions, ExportParityError, Tolerance, export_model
from eca_serve.repository import list_entries, read_config
from tests.conftest import calm_state_dict, load_reference, save_authors_format

SMALL = {"widths": [16, 32, 64, 128], "stem_width": 16}


@pytest.fixture(scope="module")
def small_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return eca_serve.create_model("eca_resnet18", num_classes=6, categories=list("abcdef"), **SMALL)


@pytest.fixture(scope="module")
def exported(small_classifier, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repo") / "shapes_small" / "1"
    export_model(small_classifier, out, ExportOptions(name="shapes_small", check_inputs=[(1, 64, 64), (3, 96, 80)]))
    return out


def test_entry_layout_and_config(exported: Path, small_classifier) -> None:
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model.onnx", "model.pt", "parity.json", "weights.safetensors"]
    config = read_config(exported)
    assert (config.name, config.version, config.task, config.architecture) == ("shapes_small", 1, "classification", "eca_resnet18")
    assert config.categories == list("abcdef") and config.num_classes == 6
    assert config.input.layout == "NCHW" and config.input.size == (224, 224) and config.input.resize == 256
    assert config.input.mean == (0.485, 0.456, 0.406)
    assert [o.name for o in config.outputs][:2] == ["logits", "attention/layer1.0.eca"]
    assert [(a.name, a.channels, a.k_size) for a in config.attention][:2] == [("layer1.0.eca", 16, 3), ("layer1.1.eca", 16, 3)]
    assert len(config.attention) == 8 and set(config.artifacts) == {"weights", "torchscript", "onnx"}
    assert config.build_kwargs["widths"] == [16, 32, 64, 128]
    assert list_entries(exported.parent.parent) == [("shapes_small", 1, exported)]


def test_parity_report_numbers(exported: Path) -> None:
    report = json.loads((exported / "parity.json").read_text())
    assert report["passed"] is True
    backends = {(r["backend"], tuple(r["input_shape"])) for r in report["rows"]}
    for backend in ("torchscript", "torchscript_reloaded", "torchscript_frozen", "onnxruntime"):
        assert {(backend, (1, 3, 64, 64)), (backend, (3, 3, 96, 80))} <= backends
    for row in report["rows"]:
        assert row["max_abs_probabilities"] < 1e-5 and row["max_abs_attention"] < 1e-5


def test_onnx_runs_at_other_batch_and_size(exported: Path, small_classifier) -> None:
    onnx.checker.check_model(str(exported / "model.onnx"), full_check=True)
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 112, 144)
    logits, *attn = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref_logits, ref_attn = small_classifier.forward_with_attention(x)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
    names = [o.name for o in session.get_outputs()]
    np.testing.assert_allclose(attn[names.index("attention/layer4.1.eca") - 1], ref_attn["layer4.1.eca"].numpy(), atol=1e-5)


def test_torchscript_artifact_keeps_attention_method(exported: Path, small_classifier) -> None:
    loaded = torch.jit.load(str(exported / "model.pt"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, attn = loaded.forward_with_attention(x)
        assert torch.allclose(logits, small_classifier(x), atol=1e-5)
    assert list(attn) == small_classifier.attention_layers


def test_weights_reload_with_config(exported: Path, small_classifier) -> None:
    config = read_config(exported)
    model = eca_serve.create_model(config.architecture, weights=exported / "weights.safetensors")
    assert model.config.categories == tuple("abcdef")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), small_classifier.state_dict().values()))


def test_tampered_artifact_is_detected(exported: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    with (copy / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ConfigError, match="does not match its sha256"):
        read_config(copy)


def test_parity_failure_fails_export_and_writes_no_config(small_classifier, tmp_path: Path) -> None:
    out = tmp_path / "strict" / "1"
    options = ExportOptions(name="strict", formats=("torchscript",), check_inputs=[(1, 64, 64)], tolerance=Tolerance(probabilities=0.0, attention=0.0))
    with pytest.raises(ExportParityError, match="torchscript_frozen"):
        export_model(small_classifier, out, options)
    assert (out / "parity.json").exists() and not (out / "config.json").exists()


def test_bad_entry_names_are_refused(small_classifier, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid model name"):
        export_model(small_classifier, tmp_path / "x", ExportOptions(name="../escape"))


def test_import_official_matches_eager(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = calm_state_dict(load_reference("eca_mobilenet_v2"), seed=3)
    ckpt = save_authors_format(state, tmp_path / "eca_mobilenetv2_k13.pth.tar", arch="eca_mobilenet_v2")
    repo = tmp_path / "models"
    assert main(["import-official", str(ckpt), "--name", "eca_mnv2", "--repository", str(repo), "--json"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["architecture"] == "eca_mobilenet_v2" and config["categories"][0] == "tench"
    assert config["provenance"]["arch_field_in_file"] == "eca_mobilenet_v2" and config["parity"]["passed"]
    eager = eca_serve.create_model("eca_mobilenet_v2", weights=ckpt)
    session = ort.InferenceSession(str(repo / "eca_mnv2" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 224, 224)
    outputs = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        logits, embedding, attn = eager.forward_with_embedding(x)
    np.testing.assert_allclose(outputs[0], logits.numpy(), atol=1e-4)
    assert len(outputs) == 1 + 17 + 1 and outputs[18].shape == (2, 1280)
    np.testing.assert_allclose(outputs[17], attn["features.17.conv.4"].numpy(), atol=1e-5)
    np.testing.assert_allclose(outputs[18], embedding.numpy(), atol=1e-4)


def test_export_cli_requires_name_version_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.pt"
    torch.save(eca_serve.create_model("eca_resnet18", num_classes=3, **SMALL).state_dict(), weights)
    assert main(["export", "eca_resnet18", "--weights", str(weights), "--out", str(tmp_path / "nover")]) == 2
    assert "<name>/<version>" in capsys.readouterr().err
