"""Export of detectors: TorchScript and ONNX artifacts, parity matched by label and IoU."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import eca_serve
from eca_serve.cli import main
from eca_serve.export import ExportOptions, export_model
from eca_serve.repository import read_config
from eca_serve.export.parity import box_iou, match_detections

SMALL_MASKRCNN = dict(num_classes=5, widths=[16, 32, 64, 128], stem_width=16, out_channels=32, box_head_dim=64,
                      mask_head_layers=2, mask_head_dim=32, min_size=160, max_size=240, score_thresh=0.0)


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    torch.manual_seed(0)
    return eca_serve.create_model("maskrcnn_eca_resnet18_fpn", **SMALL_MASKRCNN)


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repo") / "det_small" / "1"
    export_model(detector, out, ExportOptions(name="det_small"))
    return out


def test_detector_entry_config(exported: Path) -> None:
    config = read_config(exported)
    assert config.task == "instance_segmentation" and config.architecture == "maskrcnn_eca_resnet18_fpn"
    assert config.input.layout == "CHW" and config.input.size is None and config.input.normalized_in_model
    assert [o.name for o in config.outputs][:4] == ["boxes", "labels", "scores", "masks"]
    assert config.detection is not None
    assert config.detection.min_size == 160 and config.detection.warmup_size == (160, 160)
    assert config.categories[0] == "__background__" and len(config.attention) == 8


def test_detector_parity_report(exported: Path) -> None:
    report = read_config(exported).parity
    assert report["passed"]
    shapes = {tuple(r["input_shape"]) for r in report["rows"]}
    assert shapes == {(3, 160, 160), (3, 160, 219)}
    for row in report["rows"]:
        det = row["detections"]
        assert det["reference"] > 0 and det["matched"] == det["reference"] == det["candidate"]
        assert det["max_box_px"] < 0.5 and det["max_score"] < 1e-3 and det["max_mask"] < 1e-3
        assert row["max_abs_attention"] < 1e-4


def test_onnx_detector_runs_at_a_new_size(exported: Path, detector) -> None:
    onnx.checker.check_model(str(exported / "model.onnx"), full_check=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(exported / "model.onnx"), options, providers=["CPUExecutionProvider"])
    image = torch.rand(3, 131, 177, generator=torch.Generator().manual_seed(5))
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, {"input": image.numpy()})))
    with torch.no_grad():
        detections, attention = detector.forward_with_attention([image])
    ref = {k: v.numpy() for k, v in detections[0].items()}
    assert values["masks"].shape[2:] == (131, 177)
    pairs = match_detections(ref, values)
    assert len(pairs) >= 0.95 * len(ref["boxes"]) > 0
    i, j = map(list, zip(*pairs))
    np.testing.assert_allclose(values["boxes"][j], ref["boxes"][i], atol=0.05)
    np.testing.assert_allclose(values["attention/layer4.1.eca"], attention["layer4.1.eca"].numpy(), atol=1e-5)


def test_matching_is_by_label_and_iou_not_index() -> None:
    ref = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), "labels": np.array([1, 2]), "scores": np.array([0.9, 0.8])}
    cand = {"boxes": ref["boxes"][::-1].copy(), "labels": ref["labels"][::-1].copy(), "scores": ref["scores"][::-1].copy()}
    assert sorted(match_detections(ref, cand)) == [(0, 1), (1, 0)]
    cand["labels"] = np.array([1, 1])
    assert match_detections(ref, cand) == [(0, 1)]
    assert box_iou(ref["boxes"], ref["boxes"]).diagonal().tolist() == [1.0, 1.0]


def test_export_cli_for_a_detector_checkpoint(detector, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "det.pt"
    torch.save(detector.state_dict(), weights)
    assert main(["inspect", str(weights), "--input-size", "160", "--json"]) == 0
    assert '"architecture": "maskrcnn_eca_resnet18_fpn"' in capsys.readouterr().out
    out = tmp_path / "models" / "det" / "2"
    args = ["export", "maskrcnn_eca_resnet18_fpn", "--weights", str(weights), "--out", str(out), "--formats", "onnx"]
    args += ["--arg", "min_size=160", "--arg", "max_size=240", "--arg", "score_thresh=0.0", "--arg", "out_channels=32",
             "--arg", "box_head_dim=64", "--arg", "mask_head_layers=2", "--arg", "mask_head_dim=32",
             "--arg", "widths=[16,32,64,128]", "--arg", "stem_width=16"]
    assert main(args) == 0
    config = read_config(out)
    assert config.version == 2 and set(config.artifacts) == {"weights", "onnx"}
