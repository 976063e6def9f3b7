"""The zoo commands through the real console entry point."""

import json
import subprocess
import sys

import pytest

from eca_serve.cli import main


def test_models_json_lists_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"]: r for r in rows}
    assert names["eca_resnet50"]["attention"] == "eca" and names["resnet50"]["attention"] is None
    assert names["eca_mobilenet_v2"]["task"] == "classification"


def test_inspect_reports_paper_units_for_r50(authors_checkpoints, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = authors_checkpoints["eca_resnet50"]
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["architecture"] == "eca_resnet50" and report["arch_field_in_file"] == "se_resnet50"
    assert report["params"] == 25_557_112 and report["params_M_2^20"] == 24.37
    assert report["eca_params"] == 80 and report["eca_kernel_sizes"] == [3, 5, 5, 7]
    assert report["attention_layers"] == 16 and report["loaded"] == "strict"
    assert 3.7 < report["GFLOPs_macs_2^30"] < 3.9


def test_inspect_table_prints_24_37(authors_checkpoints) -> None:
    path, _ = authors_checkpoints["eca_resnet50"]
    out = subprocess.run([sys.executable, "-m", "eca_serve.cli", "inspect", str(path)], capture_output=True, text=True, check=True).stdout
    assert "24.37" in out and "eca_resnet50" in out


def test_inspect_of_garbage_exits_2_with_message(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"nope")
    assert main(["inspect", str(bad)]) == 2
    assert "cannot read checkpoint bad.pth" in capsys.readouterr().err


def test_profile_measures_latency(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "eca_mobilenet_v2", "--input-size", "64", "--iters", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == 3_504_903 and report["eca_params"] == 31
    assert report["latency_ms"] > 0 and report["images_per_s"] > 0
