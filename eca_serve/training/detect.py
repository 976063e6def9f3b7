"""``eca-serve train detect``: any registered detector on COCO-format annotations, COCO AP at the end."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from eca_serve.errors import ConfigError
from eca_serve.models import create_model
from eca_serve.training.loop import TrainConfig, run_summary, run_training, seed_everything


@dataclass(frozen=True)
class DetectData:
    """Training images + COCO JSON, and optionally a held-out pair (else 10% of images are held out)."""

    images: Path
    annotations: Path
    val_images: Path | None = None
    val_annotations: Path | None = None


class CocoDetection(Dataset):
    """COCO instances as torchvision detection targets; category ids map to labels 1..K.

    Items: ``(image [3, H, W] float in [0, 1], {"boxes": [N, 4] xyxy, "labels": [N] int64,
    "masks": [N, H, W] uint8, "image_id": int})``. Crowd annotations are skipped.
    """

    def __init__(self, images: Path, coco: Any, image_ids: list[int], train: bool) -> None:
        self.images, self.coco, self.ids, self.train = images, coco, image_ids, train
        self.cat_ids = sorted(coco.getCatIds())
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        from PIL import Image

        info = self.coco.loadImgs(self.ids[index])[0]
        with Image.open(self.images / info["file_name"]) as img:
            image = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        target = self._target(info)
        if self.train and torch.rand(()) < 0.5:
            image, target = _hflip(image, target)
        return image.contiguous(), target

    def _target(self, info: dict) -> dict[str, Tensor]:
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"])) if not a.get("iscrowd")]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        masks = [self.coco.annToMask(a) for a in anns]
        h, w = info["height"], info["width"]
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.uint8),
            "image_id": torch.tensor(info["id"]),
        }


def _hflip(image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


def load_coco(path: Path) -> Any:
    """pycocotools COCO index of a JSON file, without its console chatter."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise ConfigError(f"annotations file not found: {path}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def load_splits(data: DetectData, seed: int) -> tuple[CocoDetection, CocoDetection, list[str]]:
    """Training and validation sets and the category names (background first)."""
    coco = load_coco(data.annotations)
    names = ["__background__"] + [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))]
    ids = sorted(coco.getImgIds())
    if data.val_annotations:
        val_coco = load_coco(data.val_annotations)
        val = CocoDetection(data.val_images or data.images, val_coco, sorted(val_coco.getImgIds()), False)
        return CocoDetection(data.images, coco, ids, True), val, names
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, len(ids) // 10)
    val_ids = sorted(ids[i] for i in order[:n_val])
    train_ids = sorted(ids[i] for i in order[n_val:])
    return CocoDetection(data.images, coco, train_ids, True), CocoDetection(data.images, coco, val_ids, False), names


def collate(batch: list) -> tuple:
    """Detection batches stay lists: images differ in size."""
    return tuple(zip(*batch))


def detection_step(model: nn.Module, batch: tuple, device: torch.device) -> tuple[Tensor, int]:
    """Sum of torchvision's detection losses for one batch."""
    images = [img.to(device, non_blocking=True) for img in batch[0]]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch[1]]
    losses = model(images, targets)
    return sum(losses.values()), len(images)


@torch.inference_mode()
def evaluate_detector(model: nn.Module, dataset: CocoDetection, device: torch.device, batch_size: int = 4) -> dict[str, float]:
    """COCO AP@[.5:.95] and AP50 for boxes (and masks for Mask R-CNN) with pycocotools' COCOeval."""
    model.eval()
    results: list[dict] = []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    for images, targets in loader:
        outputs = model([img.to(device) for img in images])
        for out, target in zip(outputs, targets):
            results += coco_results(out, int(target["image_id"]), dataset.cat_ids)
    metrics = {"images": len(dataset), "detections": len(results)}
    kinds = ["bbox"] + (["segm"] if model.config.task == "instance_segmentation" else [])
    for kind in kinds:
        metrics.update(_coco_eval(dataset, results, kind))
    return metrics


def coco_results(output: dict[str, Tensor], image_id: int, cat_ids: list[int]) -> list[dict]:
    """One image's detections as COCO result dicts (xywh boxes, RLE masks thresholded at 0.5)."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].cpu().numpy()
    rles = []
    if "masks" in output:
        binary = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    results = []
    for i, (box, label, score) in enumerate(zip(boxes, output["labels"].tolist(), output["scores"].tolist())):
        entry = {"image_id": image_id, "category_id": cat_ids[label - 1], "score": float(score),
                 "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]}
        if len(rles):
            entry["segmentation"] = {"size": rles[i]["size"], "counts": rles[i]["counts"].decode("ascii")}
        results.append(entry)
    return results


def _coco_eval(dataset: CocoDetection, results: list[dict], kind: str) -> dict[str, float]:
    from pycocotools.cocoeval import COCOeval

    prefix = "box" if kind == "bbox" else "mask"
    if not results:
        return {f"{prefix}_AP": 0.0, f"{prefix}_AP50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        detections = dataset.coco.loadRes(results)
        evaluator = COCOeval(dataset.coco, detections, kind)
        evaluator.params.imgIds = dataset.ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {f"{prefix}_AP": round(float(evaluator.stats[0]), 4), f"{prefix}_AP50": round(float(evaluator.stats[1]), 4),
            f"{prefix}_AP75": round(float(evaluator.stats[2]), 4)}


def train_detector(
    name: str, model_kwargs: dict[str, Any], data: DetectData, cfg: TrainConfig,
    *, resume: Path | None = None, init_weights: Path | None = None, on_step: Callable[[dict], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``name`` on ``data`` (from ``init_weights`` if given); returns the model (eval mode) and COCO
    metrics on the held-out set."""
    gen = seed_everything(cfg.seed)
    train_set, val_set, categories = load_splits(data, cfg.seed)
    model = create_model(name, weights=init_weights, num_classes=len(categories), categories=categories,
                         **model_kwargs).to(cfg.device)
    trainer, state = run_training(model, cfg, detection_step, train_set, generator=gen, resume=resume,
                                  on_step=on_step, collate_fn=collate)
    metrics = evaluate_detector(model, val_set, trainer.device, cfg.batch_size)
    metrics.update(run_summary(state))
    return model.cpu().eval(), metrics
