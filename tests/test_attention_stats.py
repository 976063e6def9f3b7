"""``eca-serve attention-stats``: per-class mean attention of a served entry, JSON and PNG, on real Shapes images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eca_serve.cli import main
from eca_serve.repository import read_config

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stats") / "shapes"
    assert main(["data", "shapes", "--kind", "classify", "--out", str(out), "--count", "64", "--seed", "3"]) == 0
    return out


def test_json_is_classes_by_layers_by_channels(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stats"
    code = main(["attention-stats", "shapes_classifier", "--data", str(shapes), "--out", str(out),
                 "--model-repository", str(MODELS), "--max-per-class", "6"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    stats = json.loads(out.with_suffix(".json").read_text())
    config = read_config(MODELS / "shapes_classifier" / str(stats["version"]))
    assert summary["png"] == str(out.with_suffix(".png")) and summary["images"] == 48
    assert [c.split("_", 1)[1] for c in stats["classes"]] == list(config.categories)
    assert stats["images"] == [6] * 8
    assert [(layer["name"], layer["channels"]) for layer in stats["layers"]] == [(a.name, a.channels) for a in config.attention]
    assert len(stats["mean"]) == 8
    for per_class in stats["mean"]:
        assert [len(m) for m in per_class] == [a.channels for a in config.attention]
        assert all(0.0 < v < 1.0 for m in per_class for v in m)
    # the classes are told apart by the attention itself: the deepest layer's class means differ
    last = np.array([per_class[-1] for per_class in stats["mean"]])
    assert np.abs(last[:, None] - last[None]).max(axis=-1)[~np.eye(8, dtype=bool)].min() > 1e-3
    image = Image.open(io.BytesIO(out.with_suffix(".png").read_bytes()))
    assert image.format == "PNG" and image.width >= 600 and image.height >= 4 * 130


def test_one_class_folder_is_refused(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["attention-stats", "shapes_classifier", "--data", str(shapes / "05_star"), "--out", str(tmp_path / "s"),
                 "--model-repository", str(MODELS)])
    assert code == 2
    assert "one sub-folder of images per class (at least 2)" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()
