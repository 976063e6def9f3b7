"""The traps a newcomer met in the first hour (issue 25), each against the real app, pipeline or CLI."""

from __future__ import annotations

import asyncio
import json
import types
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import eca_serve
from eca_serve.api.app import serving_options
from eca_serve.cli import main
from eca_serve.export import ExportOptions, export_model
from eca_serve.pipelines import base
from eca_serve.pipelines.manager import ModelManager
from eca_serve.settings import Settings
from tests.hostile_images import png_bytes
from tests.serving_utils import SMALL, running_server

ROOT = Path(__file__).resolve().parents[1]
STAR = ROOT / "examples" / "star.png"
http = httpx.Client(timeout=60)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with one 3-class classifier (fewer classes than the old default top_k of 5)."""
    from eca_serve.models import PreprocessConfig

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = eca_serve.create_model("eca_resnet18", num_classes=3, categories=["a", "b", "c"], **SMALL)
    model.config = model.config.replace(preprocess=PreprocessConfig(input_size=(64, 64), resize=72))
    export_model(model, root / "three" / "1", ExportOptions(name="three", version=1, formats=("onnx",), check_inputs=[(1, 64, 64)]))
    return root


@pytest.fixture(scope="module")
def server(three_classes: Path):
    with running_server(Settings(model_repository=three_classes)) as (url, _):
        yield url


def _post(url: str) -> httpx.Response:
    return http.post(url, content=png_bytes(), headers={"content-type": "image/png"})


def test_default_top_k_is_at_most_the_class_count(server: str) -> None:
    classify = _post(f"{server}/v1/models/three/classify")
    attention = _post(f"{server}/v1/models/three/attention")
    assert classify.status_code == attention.status_code == 200, (classify.text, attention.text)
    assert len(classify.json()["results"][0]["predictions"]) == 3
    assert len(attention.json()["results"][0]["predictions"]) == 3
    too_many = _post(f"{server}/v1/models/three/classify?top_k=5")
    assert too_many.status_code == 422 and "top_k must be between 1 and 3, got 5" in too_many.json()["error"]


def test_predict_defaults_to_every_class_of_a_small_model(three_classes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(STAR), "--model", "three", "--model-repository", str(three_classes)]) == 0
    assert capsys.readouterr().out.count('"label"') == 3


@pytest.mark.parametrize("path, typo, known", [("classify?topk=3", "topk", "top_k"), ("attention?top_k=1&fromat=png", "fromat", "format"),
                                               ("detect?treshold=0.3", "treshold", "score_threshold")])
def test_unknown_query_parameters_are_400_naming_them(server: str, path: str, typo: str, known: str) -> None:
    response = _post(f"{server}/v1/models/three/{path}")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert repr(typo) in error and known in error and "version" in error


def test_unknown_query_parameters_on_get_routes_too(server: str) -> None:
    response = http.get(f"{server}/v1/models/three?verison=1")
    assert response.status_code == 400 and "'verison'" in response.json()["error"]
    assert http.get(f"{server}/v1/models/three?version=1").status_code == 200


def test_queue_time_excludes_inference_when_drift_is_sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference takes 1 s and the drift summary 0.5 s on a manual clock; the item waited 0 s in the queue."""
    now = [0.0]
    monkeypatch.setattr(base, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    settings = Settings(model_repository=ROOT / "models", models=["shapes_classifier"], drift_budget=1e9)
    manager = ModelManager(serving_options(settings))

    async def run() -> list[tuple[dict, float, float]]:
        await manager.load_all()
        try:
            pipeline = manager.get("shapes_classifier")
            assert pipeline.drift is not None
            infer, observe = pipeline.infer_batch, pipeline.drift.observe_rows

            def slow_infer(tensors: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
                now[0] += 1.0
                return infer(tensors)

            def slow_observe(rows: np.ndarray) -> None:
                now[0] += 0.5
                observe(rows)

            monkeypatch.setattr(pipeline, "infer_batch", slow_infer)
            monkeypatch.setattr(pipeline.drift, "observe_rows", slow_observe)
            size = pipeline.config.input.size
            item = base._Item(np.zeros((3, *size), np.float32), enqueued=0.0)
            return pipeline._run_batch([item])
        finally:
            await manager.stop(grace_s=1.0)

    [(_, queued, inference)] = asyncio.run(run())
    assert (queued, inference) == (0.0, 1.0)


NARROW = ["--arg", "widths=[8,16,32,64]", "--arg", "stem_width=8", "--input-size", "32", "--resize", "32",
          "--batch-size", "8", "--workers", "0", "--epochs", "1", "--json"]


@pytest.mark.parametrize("layout", [["train"], ["val"], ["only_class"], []])
def test_training_refuses_a_layout_that_gives_one_class(tmp_path: Path, layout: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from eca_serve.data import generate

    for folder in layout:  # `data shapes --out data/shapes/train` without a val/: the README's old sequence
        generate(tmp_path / "data" / folder, kind="classify", count=8, seed=1, size=32) if folder != "only_class" else \
            (tmp_path / "data" / folder).mkdir(parents=True)
    (tmp_path / "data").mkdir(exist_ok=True)
    assert main(["train", "classify", "--data", str(tmp_path / "data"), *NARROW, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "expected train/ and val/" in error, error
    assert not (tmp_path / "run").exists()


def test_two_runs_without_out_use_numbered_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from eca_serve.data import generate

    generate(tmp_path / "data", kind="classify", count=16, seed=1, size=32)
    monkeypatch.chdir(tmp_path)
    reports = []
    for _ in range(2):
        assert main(["train", "classify", "--data", "data", *NARROW]) == 0
        reports.append(json.loads(capsys.readouterr().out)["checkpoint"])
    assert reports == [str(Path("runs/train/last.pt")), str(Path("runs/train2/last.pt"))]
    assert (tmp_path / "runs" / "train" / "last.pt").is_file() and (tmp_path / "runs" / "train2" / "last.pt").is_file()


def test_models_table_uses_the_terminal_width_and_counts_detector_parameters(monkeypatch: pytest.MonkeyPatch,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) > 100
    for name in ("fasterrcnn_eca_resnet101_fpn", "torchvision:fasterrcnn_resnet18_fpn", "retinanet_eca_resnet18_fpn"):
        assert name in out
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["models", "--task", "detection", "--json"]) == 0
    params = {m["name"]: m["params"] for m in json.loads(capsys.readouterr().out)}
    assert len(params) >= 4 and all(isinstance(p, int) and p > 1_000_000 for p in params.values()), params
    assert main(["models", "--task", "detection"]) == 0
    narrow = capsys.readouterr().out
    assert max(len(line) for line in narrow.splitlines()) <= 80 and "torchvision:fasterrcnn_resnet18_fpn" in narrow


def test_inspect_an_int8_entry_uses_its_parents_weights_at_the_entrys_input_size(capsys: pytest.CaptureFixture[str]) -> None:
    reports = []
    for version in ("2", "1"):
        assert main(["inspect", str(ROOT / "models" / "shapes_classifier" / version), "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    int8, fp32 = reports
    assert int8["checkpoint"] == fp32["checkpoint"] == str(ROOT / "models" / "shapes_classifier" / "1" / "weights.safetensors")
    assert int8["input_size"] == fp32["input_size"] == [64, 64] and int8["macs"] == fp32["macs"]
    assert main(["inspect", str(ROOT / "models" / "shapes_classifier" / "1"), "--input-size", "224", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] > 10 * fp32["macs"]
