"""The shipped default models load from models/ and reach their recorded quality on a held-out sample."""

from pathlib import Path

import numpy as np
import pytest

from eca_serve.data import ShapesClassification, write_coco
from eca_serve.repository import read_config
from eca_serve.runtime import BackendOptions, create_backend, stack_outputs

MODELS = Path(__file__).resolve().parents[1] / "models"
CLASSIFIER, DETECTOR = MODELS / "shapes_classifier" / "1", MODELS / "shapes_detector" / "1"
SIZE_LIMIT_BYTES = 40 * 1024 * 1024


def test_shipped_files_stay_within_40_mb() -> None:
    total = sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file())
    assert total <= SIZE_LIMIT_BYTES, f"models/ holds {total / 2**20:.1f} MiB"


def test_classifier_reaches_recorded_accuracy_on_held_out_shapes() -> None:
    from eca_serve.pipelines.preprocess import preprocess_classification

    config = read_config(CLASSIFIER)
    assert config.metrics["top1"] >= 97.0 and config.metrics["images"] >= 2000
    backend = create_backend(CLASSIFIER, config, BackendOptions("onnxruntime"))
    # The validation split of the documented command: seed 2, images 0..399 of the same generator.
    held_out = ShapesClassification(seed=2, length=400, size=64, transform=lambda image: image)
    samples = [held_out[i] for i in range(len(held_out))]
    batch = np.stack([preprocess_classification(img, config.input) for img, _ in samples])
    predicted = stack_outputs(backend.infer(batch))["logits"].argmax(1)
    accuracy = 100.0 * float(np.mean(predicted == np.array([label for _, label in samples])))
    assert accuracy >= config.metrics["top1"] - 2.0, accuracy


def test_detector_reaches_recorded_ap_on_held_out_scenes(tmp_path: Path) -> None:
    from eca_serve.training.detect import CocoDetection, evaluate_detector, load_coco

    config = read_config(DETECTOR)
    assert config.metrics["box_AP"] >= 0.70 and config.metrics["mask_AP"] >= 0.65 and config.metrics["images"] >= 300
    import eca_serve

    model = eca_serve.create_model(config.architecture, weights=DETECTOR / "weights.safetensors")
    write_coco(tmp_path, 40, seed=12, size=128)  # the first 40 scenes of the held-out split
    coco = load_coco(tmp_path / "annotations.json")
    metrics = evaluate_detector(model, CocoDetection(tmp_path / "images", coco, sorted(coco.getImgIds()), False), "cpu")
    assert metrics["box_AP"] >= config.metrics["box_AP"] - 0.08 and metrics["mask_AP"] >= config.metrics["mask_AP"] - 0.08, metrics
