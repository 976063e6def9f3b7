"""`eca-serve quantize` of the shipped detector: INT8 backbone + FPN, AP report, refusal beyond the AP bound."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from eca_serve.cli import main
from eca_serve.data import write_coco
from eca_serve.quantize.detector import CocoSet, coco_ap, detector_nodes, load_scenes
from eca_serve.quantize.graph import attention_nodes, cpu_session
from eca_serve.repository import read_config

ROOT = Path(__file__).resolve().parents[1]
NAME = "shapes_detector"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(calibration, eval) COCO folders: 4 training-distribution scenes (seed 11), 8 held-out (seed 12)."""
    root = tmp_path_factory.mktemp("scenes")
    write_coco(root / "calibration", 4, seed=11)
    write_coco(root / "eval", 8, seed=12)
    return root / "calibration", root / "eval"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(ROOT / "models" / NAME / "1", root / NAME / "1")
    return root


def quantize(repository: Path, scenes: tuple[Path, Path], *extra: str) -> int:
    calibration, held_out = scenes
    return main(["quantize", NAME, "--model-repository", str(repository), "--calibration", str(calibration),
                 "--eval", str(held_out), "--calibration-images", "4", "--json", *extra])


def test_int8_detector_entry_reports_ap_that_a_recomputation_matches(repository: Path, scenes: tuple[Path, Path]) -> None:
    assert quantize(repository, scenes, "--max-ap-drop", "100") == 0
    config = read_config(repository / NAME / "2")  # verifies the INT8 graph's sha256
    report = json.loads((repository / NAME / "2" / "quantization.json").read_text())
    assert config.precision == "int8" and list(config.artifacts) == ["onnx"]
    assert config.metrics["quantization"] == report and report["parent_version"] == 1
    assert report["setting"] == {"method": "minmax", "per_channel": True, "scope": "backbone_fpn", "calibration_images": 4}

    data = CocoSet(scenes[1])
    ids, files = data.files()
    inputs = load_scenes(files, config)
    int8 = coco_ap(cpu_session(repository / NAME / "2" / "model.onnx"), data, inputs, ids, config.categories)
    assert int8 == report["int8"] and report["eval_images"] == 8
    assert report["ap_drop_points"] == {k: round(100 * (report["fp32"][k] - int8[k]), 2) for k in ("box_AP", "mask_AP")}
    assert report["fp32"]["mask_AP"] > 0.3  # the shipped detector finds the shapes: the comparison means something

    graph = onnx.load(str(repository / NAME / "2" / "model.onnx"))
    quantized = {n.name for n in graph.graph.node if n.op_type == "QuantizeLinear"}
    assert len(quantized) > 20
    producer = {o: n for n in graph.graph.node for o in n.output}
    for node in graph.graph.node:  # the RoI heads stay float: RoIAlign reads float feature maps
        if node.op_type == "RoiAlign":
            assert producer[node.input[0]].op_type == "DequantizeLinear"
        if node.name.startswith(("/roi_heads/box_head", "/roi_heads/mask_head")):
            assert node.op_type not in ("QLinearConv", "QuantizeLinear")
    assert main(["quantization", NAME, "--model-repository", str(repository), "--json"]) == 0


def test_a_drop_beyond_the_ap_bound_exits_2_and_keeps_only_the_report(repository: Path, scenes: tuple[Path, Path],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # a bound of -100 points refuses whatever INT8 scores: the refusal path, not the numbers, is tested
    assert quantize(repository, scenes, "--max-ap-drop", "-100", "--out-version", "3") == 2
    assert "refused: AP drop" in capsys.readouterr().err
    folder = repository / NAME / "3"
    assert sorted(p.name for p in folder.iterdir()) == ["quantization.json"]
    report = json.loads((folder / "quantization.json").read_text())
    assert report["accepted"] is False and report["max_ap_drop_points"] == -100


def test_detector_scopes_select_backbone_and_fpn_nodes_only() -> None:
    model = onnx.load(str(ROOT / "models" / NAME / "1" / "model.onnx"))
    gates = [a.output for a in read_config(ROOT / "models" / NAME / "1", verify=False).attention]
    full = set(detector_nodes(model, "backbone_fpn", gates))
    assert not any(n.startswith(("/rpn", "/roi_heads", "/transform")) for n in full)
    assert {"/conv1/Conv", "/fpn/Add", "/fpn/layer_blocks.0/layer_blocks.0.0/Conv"} <= full
    assert not full & set(attention_nodes(model, gates))  # ECA gates stay float
    backbone = set(detector_nodes(model, "backbone", gates))
    assert backbone < full and not any("fpn" in n for n in backbone)
    assert "/fpn/Add" not in set(detector_nodes(model, "fpn_adds_float", gates))
    ends = set(detector_nodes(model, "ends_float", gates))
    assert "/conv1/Conv" not in ends and "/fpn/layer_blocks.0/layer_blocks.0.0/Conv" not in ends
    rpn = set(detector_nodes(model, "with_rpn_head", gates)) - full
    assert rpn and all(n.startswith("/rpn/head/conv") for n in rpn)
