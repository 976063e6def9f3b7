"""Tiny real training runs: loss goes down, checkpoints resume, repository entries are written."""

from pathlib import Path

import pytest
import torch

import eca_serve
from eca_serve.cli import main
from eca_serve.data import generate
from eca_serve.errors import ConfigError
from eca_serve.repository import read_config
from eca_serve.training import TrainConfig

NARROW = ["--arg", "widths=[8,16,32,64]", "--arg", "stem_width=8"]


def losses(checkpoint: Path) -> list[float]:
    return torch.load(checkpoint, weights_only=True)["train_state"]["losses"]


def test_train_classify_lowers_loss_and_exports(tmp_path: Path) -> None:
    generate(tmp_path / "data" / "train", kind="classify", count=32, seed=1, size=32)
    generate(tmp_path / "data" / "val", kind="classify", count=16, seed=2, size=32)
    entry = tmp_path / "models" / "tiny_cls" / "1"
    args = ["train", "classify", "--data", str(tmp_path / "data"), "--model", "eca_resnet18", *NARROW, "--input-size", "32",
            "--resize", "32", "--epochs", "6", "--batch-size", "16", "--optimizer", "adamw", "--lr", "0.01",
            "--warmup-steps", "1", "--workers", "0", "--out", str(tmp_path / "run"), "--export-to", str(entry), "--json"]
    assert main(args) == 0
    history = losses(tmp_path / "run" / "last.pt")
    assert len(history) == 12 and sum(history[-3:]) / 3 < sum(history[:3]) / 3
    config = read_config(entry)
    assert config.categories == ["circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ellipse"]
    assert config.input.size == (32, 32) and config.input.resize == 32
    assert {"top1", "top5", "train_seconds"} <= set(config.metrics) and config.provenance["seed"] == 0
    model = eca_serve.create_model("eca_resnet18", weights=entry / "weights.safetensors")
    assert model.config.num_classes == 8 and model.config.extra["widths"] == [8, 16, 32, 64]


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    generate(tmp_path / "data", kind="classify", count=40, seed=3, size=32)
    common = ["train", "classify", "--data", str(tmp_path / "data"), *NARROW, "--input-size", "32", "--resize", "32",
              "--batch-size", "8", "--workers", "0", "--json"]
    assert main([*common, "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--epochs", "2", "--out", str(tmp_path / "b"), "--resume", str(tmp_path / "a" / "last.pt")]) == 0
    first, resumed = losses(tmp_path / "a" / "last.pt"), losses(tmp_path / "b" / "last.pt")
    assert resumed[: len(first)] == first and len(resumed) == 2 * len(first)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["train_state"]["epoch"] == 2


def test_train_detect_on_coco_writes_checkpoint_metrics_and_entry(tmp_path: Path) -> None:
    generate(tmp_path / "train", kind="detect", count=6, seed=1, size=64)
    generate(tmp_path / "val", kind="detect", count=2, seed=2, size=64)
    entry = tmp_path / "models" / "tiny_det" / "1"
    args = ["train", "detect", "--images", str(tmp_path / "train" / "images"), "--annotations", str(tmp_path / "train" / "annotations.json"),
            "--val-images", str(tmp_path / "val" / "images"), "--val-annotations", str(tmp_path / "val" / "annotations.json"),
            "--model", "maskrcnn_eca_resnet18_fpn", *NARROW, "--arg", "out_channels=16", "--arg", "box_head_dim=32",
            "--arg", "mask_head_layers=1", "--arg", "mask_head_dim=16", "--arg", "min_size=64", "--arg", "max_size=64",
            "--arg", "frozen_bn=false", "--arg", "trainable_layers=5", "--epochs", "4", "--batch-size", "2",
            "--optimizer", "adamw", "--lr", "0.002", "--warmup-steps", "1", "--workers", "0", "--out", str(tmp_path / "run"),
            "--export-to", str(entry), "--json"]
    assert main(args) == 0
    history = losses(tmp_path / "run" / "last.pt")
    assert len(history) == 12 and sum(history[-3:]) < sum(history[:3])
    config = read_config(entry)
    assert config.task == "instance_segmentation" and config.categories[0] == "__background__" and len(config.categories) == 9
    assert {"box_AP", "mask_AP", "box_AP50"} <= set(config.metrics)
    assert (entry / "model.onnx").exists() and config.parity["passed"]


def test_train_config_rules() -> None:
    with pytest.raises(ConfigError, match="--amp needs --device cuda"):
        TrainConfig(amp=True)
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
