"""The procedural shapes dataset: determinism, honest labels, masks/boxes, exporters, torch views."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision.datasets import ImageFolder
from torchvision.ops import box_iou, masks_to_boxes

from eca_serve.data import (
    IMAGEFOLDER_CLASSES,
    MIN_VISIBLE_PIXELS,
    SHAPE_CLASSES,
    ShapesClassification,
    ShapesDetection,
    generate,
    make_classification_sample,
    make_scene,
    sample_rng,
    write_coco,
    write_imagefolder,
)
from eca_serve.errors import ConfigError

SEED = 7


def _pixels(image: Image.Image) -> np.ndarray:
    return np.array(image.convert("RGB"))


def _tight_box(mask: np.ndarray) -> list[float]:
    """xyxy box of a mask with exclusive x2/y2, computed independently of the library."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of integer points [K, 2] (monotone chain + shoelace)."""
    pts = sorted(set(map(tuple, points.tolist())))

    def half(seq: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for p in seq:
            while len(out) >= 2 and (out[-1][0] - out[-2][0]) * (p[1] - out[-2][1]) - (
                out[-1][1] - out[-2][1]
            ) * (p[0] - out[-2][0]) <= 0:
                out.pop()
            out.append(p)
        return out

    hull = np.array(half(pts)[:-1] + half(pts[::-1])[:-1], dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _classify_mask(mask: np.ndarray) -> str:
    """Name the shape of one unoccluded mask from rotation-invariant measurements.

    solidity = area / convex-hull area (star ~0.5, cross ~0.65, convex shapes > 0.85);
    moment fit = area / (4 pi sqrt(det cov)), exactly 1 for ellipses, 3/pi for squares, 0.83 for
    equilateral triangles; fill = area / (pi R^2) with R the farthest pixel from the centroid.
    """
    ys, xs = np.nonzero(mask)
    area = float(len(xs))
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    solidity = area / _hull_area(corners)
    moment_fit = area / (4 * np.pi * np.sqrt(np.linalg.det(np.cov(np.stack([xs, ys])))))
    radius = np.hypot(xs - xs.mean(), ys - ys.mean()).max() + 0.5
    fill = area / (np.pi * radius**2)
    if solidity < 0.6:
        return "star"
    if solidity < 0.8:
        return "cross"
    if moment_fit < 0.88:
        return "triangle"
    if moment_fit < 0.966:
        return "square"
    if fill > 0.86:
        return "circle"
    if fill < 0.67:
        return "ellipse"
    return "pentagon" if moment_fit < 0.985 else "hexagon"


def test_classification_sample_same_seed_same_bytes_and_other_seed_differs() -> None:
    image, label = make_classification_sample(sample_rng(SEED, 3))
    again, label_again = make_classification_sample(sample_rng(SEED, 3))
    other, _ = make_classification_sample(sample_rng(SEED + 1, 3))
    assert image.mode == "RGB" and image.size == (64, 64)
    assert image.tobytes() == again.tobytes() and label == label_again
    assert image.tobytes() != other.tobytes()
    assert make_classification_sample(123)[0].tobytes() == make_classification_sample(
        np.random.default_rng(123)
    )[0].tobytes()


def test_scene_same_seed_same_bytes_and_other_seed_differs() -> None:
    first = make_scene(sample_rng(SEED, 0), num_objects=5)
    second = make_scene(sample_rng(SEED, 0), num_objects=5)
    other = make_scene(sample_rng(SEED, 1), num_objects=5)
    assert len(first.labels) > 0
    assert first.image.tobytes() == second.image.tobytes()
    assert first.boxes.tobytes() == second.boxes.tobytes()
    assert first.labels.tobytes() == second.labels.tobytes()
    assert first.masks.tobytes() == second.masks.tobytes()
    assert first.image.tobytes() != other.image.tobytes()
    assert first.masks.shape != other.masks.shape or not np.array_equal(first.masks, other.masks)


def test_every_class_appears_and_forced_labels_are_kept() -> None:
    drawn = [make_classification_sample(sample_rng(SEED, i), size=32)[1] for i in range(64)]
    assert set(drawn) == set(range(len(SHAPE_CLASSES)))
    for index, label in enumerate(drawn[:8]):
        image, _ = make_classification_sample(sample_rng(SEED, index), size=32)
        forced, forced_label = make_classification_sample(sample_rng(SEED, index), size=32, label=label)
        assert forced_label == label and forced.tobytes() == image.tobytes()
    for label in range(len(SHAPE_CLASSES)):
        image, got = make_classification_sample(sample_rng(SEED, 100 + label), size=32, label=label)
        again, _ = make_classification_sample(sample_rng(SEED, 100 + label), size=32, label=label)
        assert got == label and image.tobytes() == again.tobytes()


def test_scene_labels_name_the_shape_that_was_drawn() -> None:
    seen = set()
    for index in range(64):
        scene = make_scene(sample_rng(SEED, index), size=128, num_objects=1)
        assert scene.labels.shape == (1,)
        name = SHAPE_CLASSES[int(scene.labels[0]) - 1]
        assert _classify_mask(scene.masks[0].astype(bool)) == name, f"scene {index}"
        seen.add(name)
    assert seen == set(SHAPE_CLASSES)


def test_scene_masks_and_boxes_agree() -> None:
    overlapping_boxes = 0
    for index in range(12):
        scene = make_scene(sample_rng(SEED, index), size=(96, 128), num_objects=8)
        n = len(scene.labels)
        assert scene.image.size == (128, 96)
        assert scene.boxes.dtype == np.float32 and scene.boxes.shape == (n, 4)
        assert scene.labels.dtype == np.int64 and set(scene.labels.tolist()) <= set(range(1, 9))
        assert scene.masks.dtype == np.uint8 and scene.masks.shape == (n, 96, 128)
        assert set(np.unique(scene.masks).tolist()) <= {0, 1}
        assert scene.masks.sum(axis=0).max() <= 1  # occlusion leaves each pixel to one instance
        assert (scene.masks.sum(axis=(1, 2)) >= MIN_VISIBLE_PIXELS).all()
        for mask, box in zip(scene.masks, scene.boxes, strict=True):
            assert box.tolist() == _tight_box(mask)
        boxes = torch.from_numpy(scene.boxes)
        torch.testing.assert_close(masks_to_boxes(torch.from_numpy(scene.masks)), boxes - torch.tensor([0, 0, 1, 1.0]))
        ious = torch.triu(box_iou(boxes, boxes), diagonal=1)
        overlapping_boxes += int((ious > 0).sum())
    assert overlapping_boxes > 0  # scenes do contain overlapping objects


def test_scene_can_be_empty() -> None:
    empty = make_scene(sample_rng(SEED, 0), size=64, num_objects=0)
    assert empty.image.size == (64, 64)
    assert empty.boxes.shape == (0, 4) and empty.boxes.dtype == np.float32
    assert empty.labels.shape == (0,) and empty.labels.dtype == np.int64
    assert empty.masks.shape == (0, 64, 64) and empty.masks.dtype == np.uint8
    assert len(make_scene(sample_rng(SEED, 0), size=64, max_objects=0).labels) == 0
    counts = [len(make_scene(sample_rng(SEED, i), size=64).labels) for i in range(40)]
    assert 0 in counts and max(counts) > 3  # the random count spans empty and crowded scenes


def test_write_coco_loads_with_pycocotools_and_matches_make_scene(tmp_path: Path) -> None:
    assert write_coco(tmp_path, 3, seed=SEED, size=64) == 3
    coco = COCO(str(tmp_path / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    total = 0
    for index in range(3):
        scene = make_scene(sample_rng(SEED, index), size=64)
        info = coco.loadImgs(index + 1)[0]
        assert (info["width"], info["height"]) == (64, 64)
        assert np.array_equal(_pixels(Image.open(tmp_path / "images" / info["file_name"])), _pixels(scene.image))
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=index + 1)), key=lambda a: a["id"])
        assert len(anns) == len(scene.labels)
        for ann, mask, box, label in zip(anns, scene.masks, scene.boxes, scene.labels, strict=True):
            assert np.array_equal(coco.annToMask(ann), mask)
            x1, y1, x2, y2 = box.tolist()
            assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert mask_utils.toBbox(ann["segmentation"]).tolist() == ann["bbox"]
            assert ann["area"] == mask.sum() and ann["iscrowd"] == 0 and ann["category_id"] == label
        total += len(anns)
    assert total > 0
    assert json.loads((tmp_path / "annotations.json").read_text())["annotations"][0]["id"] == 1


def test_write_imagefolder_loads_with_torchvision_in_class_order(tmp_path: Path) -> None:
    assert write_imagefolder(tmp_path, 16, seed=SEED, size=32, split="train") == 16
    folder = ImageFolder(str(tmp_path / "train"))
    assert folder.class_to_idx == {name: i for i, name in enumerate(IMAGEFOLDER_CLASSES)}
    assert [name.split("_", 1)[1] for name in folder.classes] == list(SHAPE_CLASSES)
    assert len(folder) == 16
    generated = ShapesClassification(SEED, 16, size=32)
    for path, target in folder.samples:
        index = int(Path(path).stem)
        image, label = generated[index]
        assert target == label == index % len(SHAPE_CLASSES)
        assert torch.equal(torch.from_numpy(_pixels(Image.open(path))).permute(2, 0, 1), (image * 255).round().byte())


def test_generate_writes_both_kinds(tmp_path: Path) -> None:
    assert generate(tmp_path / "cls", kind="classify", count=8, seed=1, size=32) == 8
    assert len(list((tmp_path / "cls").rglob("*.png"))) == 8
    assert generate(tmp_path / "det", kind="detect", count=2, seed=1, size=64) == 2
    assert len(COCO(str(tmp_path / "det" / "annotations.json")).getImgIds()) == 2
    with pytest.raises(ConfigError):
        generate(tmp_path / "bad", kind="segment", count=2, seed=1)  # type: ignore[arg-type]


def test_classification_dataset_types() -> None:
    dataset = ShapesClassification(SEED, 10, size=32)
    assert len(dataset) == 10
    image, label = dataset[9]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert isinstance(label, int) and label == 9 % len(SHAPE_CLASSES)
    sized = ShapesClassification(SEED, 10, size=32, transform=lambda im: (im.mode, im.size))
    assert sized[0] == (("RGB", (32, 32)), 0)
    with pytest.raises(IndexError):
        dataset[10]


def test_detection_dataset_types() -> None:
    dataset = ShapesDetection(SEED, 4, size=64)
    image, target = dataset[1]
    n = len(target["labels"])
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert set(target) == {"boxes", "labels", "masks"}
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    assert target["labels"].dtype == torch.int64
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, 64, 64)
    scene = make_scene(sample_rng(SEED, 1), size=64)
    assert torch.equal(target["masks"], torch.from_numpy(scene.masks))
    flipped = ShapesDetection(SEED, 4, size=64, transform=lambda im, t: (im.flip(-1), t))
    assert torch.equal(flipped[1][0], image.flip(-1))
    with pytest.raises(IndexError):
        dataset[4]


@pytest.mark.parametrize(
    "call",
    [
        lambda: make_classification_sample(0, size=8),
        lambda: make_classification_sample(0, label=len(SHAPE_CLASSES)),
        lambda: make_scene(0, size=(64, 16)),
        lambda: make_scene(0, max_objects=-1),
        lambda: make_scene(0, num_objects=-2),
        lambda: sample_rng(-1, 0),
        lambda: ShapesDetection(0, -1),
        lambda: write_imagefolder("/tmp/unused-shapes", 4, seed=0),
        lambda: write_imagefolder("/tmp/unused-shapes", 8, seed=0, split="a/b"),
    ],
)
def test_invalid_arguments_raise_config_error(call) -> None:
    with pytest.raises(ConfigError):
        call()


def test_writers_check_arguments_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_imagefolder(tmp_path / "cls", 8, seed=-1)
    with pytest.raises(ConfigError):
        write_coco(tmp_path / "det", 2, seed=0, size=8)
    assert list(tmp_path.iterdir()) == []
