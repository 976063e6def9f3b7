"""Attention drift: PSI arithmetic, a bounded window, and the shipped classifier's score on shifted data."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from eca_serve.data import ShapesClassification
from eca_serve.errors import ConfigError
from eca_serve.pipelines.drift import DriftMonitor, build_reference, psi
from eca_serve.repository import read_config
from eca_serve.settings import Settings
from tests.serving_utils import running_server

ROOT = Path(__file__).resolve().parents[1]
CLS = "shapes_classifier"
http = httpx.Client(timeout=60)


def test_psi_is_zero_for_the_reference_masses_and_grows_with_concentration() -> None:
    assert psi(np.full(10, 1000)) == pytest.approx(0.0, abs=1e-9)
    half = psi(np.array([500, 500, 0, 0, 0, 0, 0, 0, 0, 0]))
    everything = psi(np.array([1000, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
    assert 0.25 < half < everything
    assert psi(np.zeros(10)) == pytest.approx(0.0, abs=1e-9)  # an empty window reads as stable


def test_monitor_holds_at_most_its_window_and_scores_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = build_reference({"a": rng.random((400, 16)), "b": rng.random((400, 8))})
    monitor = DriftMonitor(reference, window=100)
    for _ in range(10):
        monitor.observe({"a": rng.random((50, 16)), "b": rng.random((50, 8))})
    stable = monitor.scores()
    assert stable.images == 100 and stable.score < 0.25
    assert monitor._counts.sum(axis=1).tolist() == [100, 100]
    monitor.observe({"a": rng.random((100, 16)) * 0.2 + 0.8, "b": rng.random((100, 8)) * 0.2 + 0.8})
    shifted = monitor.scores()
    assert shifted.images == 100 and shifted.score > 1.0 and [n for n, _ in shifted.layers] == ["a", "b"]


def test_no_score_before_the_window_holds_enough_images() -> None:
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(build_reference({"a": rng.random((40, 4))}), window=512)
    monitor.observe({"a": rng.random((99, 4))})
    assert monitor.scores().score is None and monitor.scores().images == 99
    monitor.observe({"a": rng.random((1, 4))})
    assert monitor.scores().score is not None


def test_a_reference_needs_enough_images() -> None:
    with pytest.raises(ConfigError, match="at least 20 images"):
        build_reference({"a": np.zeros((5, 4))})


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _post_all(base: str, images: list[bytes]) -> None:
    for start in range(0, len(images), 16):
        files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images[start:start + 16])]
        assert http.post(f"{base}/v1/models/{CLS}/classify", files=files).status_code == 200


def _drift(base: str) -> dict:
    response = http.get(f"{base}/v1/models/{CLS}/drift")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("shift", ["blur", "noise"])
def test_shipped_classifier_drift_stays_low_in_distribution_and_rises_on_shifted_data(shift: str) -> None:
    config = read_config(ROOT / "models" / CLS / "2")  # the newest version answers
    assert config.drift is not None and config.drift.images >= 200
    # Held out from both training and the reference (which used seed 2): seed 7.
    held_out = [image for image, _ in (ShapesClassification(seed=7, length=200, size=64, transform=lambda i: i)[i] for i in range(200))]
    rng = np.random.default_rng(1)
    shifted = [image.filter(ImageFilter.GaussianBlur(3)) if shift == "blur" else
               Image.fromarray((np.asarray(image, np.float32) + rng.normal(0, 40, (64, 64, 3))).clip(0, 255).astype(np.uint8))
               for image in held_out]
    with running_server(Settings(model_repository=ROOT / "models", models=[CLS], drift_window=200, drift_budget=100.0)) as (base, _):
        empty = _drift(base)
        assert empty["images_in_window"] == empty["images_seen"] == 0 and empty["score"] is None and {l["score"] for l in empty["layers"]} == {None}
        _post_all(base, [_png(i) for i in held_out])
        stable = _drift(base)
        _post_all(base, [_png(i) for i in shifted])
        moved = _drift(base)
        metrics = http.get(f"{base}/metrics").text
    assert stable["images_in_window"] == moved["images_in_window"] == stable["window"] == 200
    assert moved["images_seen"] == moved["images_sampled"] == 400 and moved["requests"] == 200  # every batch summarised
    assert stable["score"] < 0.15, stable
    assert moved["score"] > 0.5 and moved["score"] > 5 * stable["score"], moved
    assert [l["name"] for l in moved["layers"]] == [a.name for a in config.attention]
    newest = moved["version"]
    assert f'eca_serve_attention_drift_model_score{{model="{CLS}",version="{newest}"}}' in metrics
    assert f'eca_serve_attention_drift_model_score{{model="{CLS}",version="1"}}' not in metrics  # v1 saw no request


def test_drift_of_a_model_without_reference_is_404(tmp_path: Path) -> None:
    with running_server(Settings(model_repository=ROOT / "models", models=[CLS], drift_window=0)) as (base, _):
        response = http.get(f"{base}/v1/models/{CLS}/drift")
    assert response.status_code == 404 and "calibrate-drift" in response.json()["error"]


def test_monitoring_stays_within_its_budget_of_inference_time() -> None:
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(build_reference({"a": rng.random((40, 4))}), budget=0.01)
    assert monitor.due(0.5)  # nothing spent yet
    monitor.charge(1.0)  # summarising cost 1 s so far
    assert not monitor.due(10.0)  # 1 s > 1% of 10.5 s of inference: skip this batch
    assert monitor.due(90.0)  # 1 s <= 1% of 100.5 s: summarise again


def test_scores_tell_images_seen_from_images_sampled() -> None:
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(build_reference({"a": rng.random((40, 4))}), window=50, budget=0.01)
    assert monitor.due(0.5, images=8)  # nothing spent yet: summarise
    monitor.observe({"a": rng.random((8, 4))})
    monitor.charge(1.0)
    assert not monitor.due(0.5, images=8)  # over budget: seen, not summarised
    scores = monitor.scores()
    assert (scores.seen, scores.sampled, scores.images, scores.min_images) == (16, 8, 8, 50)
