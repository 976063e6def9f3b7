"""``eca-serve export`` of weights written by an export keeps their preprocessing (not the architecture's 224 px)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eca_serve.cli import main
from eca_serve.repository import read_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "shapes_classifier" / "1"


def test_reexport_of_shipped_weights_classifies_as_the_shipped_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repository = tmp_path / "models"
    out = repository / "shapes_classifier" / "1"
    assert main(["export", "eca_resnet18", "--weights", str(SHIPPED / "weights.safetensors"), "--out", str(out),
                 "--formats", "onnx", "--json"]) == 0
    capsys.readouterr()
    shipped, again = read_config(SHIPPED), read_config(out)
    assert tuple(again.input.size) == tuple(shipped.input.size) == (64, 64)
    for field in ("resize", "crop", "interpolation", "mean", "std"):
        assert getattr(again.input, field) == getattr(shipped.input, field), field
    assert again.categories == shipped.categories

    shipped_v1 = tmp_path / "shipped" / "shapes_classifier"
    shipped_v1.mkdir(parents=True)
    (shipped_v1 / "1").symlink_to(SHIPPED)
    answers = []
    for repo in (repository, shipped_v1.parent):
        code = main(["predict", str(ROOT / "examples" / "star.png"), "--model", "shapes_classifier",
                     "--model-repository", str(repo), "--top-k", "3"])
        assert code == 0
        answers.append(json.loads(capsys.readouterr().out)["results"][0]["predictions"])
    assert [p["label"] for p in answers[0]] == [p["label"] for p in answers[1]]
    assert answers[0][0]["label"] == "star"
    assert answers[0][0]["score"] == pytest.approx(answers[1][0]["score"], abs=1e-4)


def test_export_flags_override_the_stored_preprocessing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models" / "shapes_classifier" / "1"
    assert main(["export", "eca_resnet18", "--weights", str(SHIPPED / "weights.safetensors"), "--out", str(out),
                 "--formats", "onnx", "--json", "--input-size", "72", "--resize", "80", "--interpolation", "bicubic"]) == 0
    capsys.readouterr()
    again, shipped = read_config(out).input, read_config(SHIPPED).input
    assert (tuple(again.size), again.resize, again.interpolation) == ((72, 72), 80, "bicubic")
    assert (again.crop, again.mean, again.std) == (shipped.crop, shipped.mean, shipped.std)  # the rest as stored


def test_a_bad_preprocessing_flag_is_a_config_error_before_any_export(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models" / "shapes_classifier" / "1"
    assert main(["export", "eca_resnet18", "--weights", str(SHIPPED / "weights.safetensors"), "--out", str(out),
                 "--formats", "onnx", "--resize", "0"]) == 2
    err = capsys.readouterr().err
    assert "preprocessing flags" in err and "resize" in err
    assert not out.exists()
