"""``eca-serve train classify``: any registered classifier on an ImageFolder tree."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, random_split

from eca_serve.errors import ConfigError
from eca_serve.models import PreprocessConfig, create_model
from eca_serve.training.dgc import dgc_classification_step, finish_dgc
from eca_serve.training.loop import TrainConfig, run_summary, run_training, seed_everything

_INDEX_PREFIX = re.compile(r"^\d+_")


@dataclass(frozen=True)
class ClassifyData:
    """Where the images are and how they are fed.

    Attributes:
        root: ImageFolder root; with ``train/`` and ``val/`` sub-trees those are used as the splits.
        input_size: Side of the square crop the model sees.
        resize: Shorter side before the center crop at evaluation (None: ``input_size / 0.875``).
        val_fraction: Held-out share when ``root`` has no ``val/`` sub-tree.
        augment: ``standard`` (random resized crop 0.6-1, flip, colour jitter), ``light`` (flip and colour
            jitter on the evaluation view: for fine-tuning when crops would cut objects out of the image) or
            ``flip`` (flip only, on the evaluation view: short runs from scratch on data whose colours are
            already random, such as Shapes).
    """

    root: Path
    input_size: int = 224
    resize: int | None = None
    val_fraction: float = 0.1
    augment: str = "standard"

    @property
    def eval_resize(self) -> int:
        return self.resize or round(self.input_size / 0.875)


def class_names(folders: list[str]) -> list[str]:
    """Folder names as category names; a shared ``NN_`` ordering prefix (``00_circle``) is dropped."""
    if folders and all(_INDEX_PREFIX.match(f) for f in folders):
        return [_INDEX_PREFIX.sub("", f) for f in folders]
    return list(folders)


def _transforms(data: ClassifyData, pre: PreprocessConfig, train: bool) -> Callable:
    from torchvision import transforms as T

    normalize = [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    eval_view = [T.Resize(data.eval_resize), T.CenterCrop(data.input_size)]
    flip = [T.RandomHorizontalFlip()]
    jitter = [*flip, T.ColorJitter(0.3, 0.3, 0.3, 0.05)]
    if not train:
        return T.Compose([*eval_view, *normalize])
    if data.augment == "standard":
        return T.Compose([T.RandomResizedCrop(data.input_size, scale=(0.6, 1.0)), *jitter, *normalize])
    return T.Compose([*eval_view, *(jitter if data.augment == "light" else flip), *normalize])


def check_layout(root: Path) -> None:
    """Refuse an ImageFolder root whose layout would train a model of fewer than 2 classes.

    Accepted: ``train/`` and ``val/`` with the same class folders, or class folders directly under
    ``root`` (a validation share is split off). A ``train/`` (or ``val/``) alone would otherwise be
    read as the only class and train a one-class model reporting top-1 100%.

    Raises:
        ConfigError: not a folder, one split without the other, or fewer than 2 class folders.
    """
    expected = "expected train/ and val/ each holding one folder per class, or class folders directly under it"
    if not root.is_dir():
        raise ConfigError(f"--data {root} is not a folder; {expected}")
    splits = [s for s in ("train", "val") if (root / s).is_dir()]
    if len(splits) == 1:
        missing = "val" if splits[0] == "train" else "train"
        raise ConfigError(f"--data {root} has {splits[0]}/ but no {missing}/; {expected}")
    for folder in [root / s for s in splits] or [root]:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if len(classes) < 2:
            raise ConfigError(f"--data {folder} has {len(classes)} class folder(s) {classes}: a classifier needs at least 2; {expected}")


def load_splits(data: ClassifyData, pre: PreprocessConfig, seed: int) -> tuple[Dataset, Dataset, list[str]]:
    """Training and validation datasets and the category names (layout rules: `check_layout`)."""
    from torchvision.datasets import ImageFolder

    check_layout(data.root)
    if (data.root / "train").is_dir() and (data.root / "val").is_dir():
        train = ImageFolder(str(data.root / "train"), _transforms(data, pre, True))
        val = ImageFolder(str(data.root / "val"), _transforms(data, pre, False))
        if train.classes != val.classes:
            raise ConfigError("train/ and val/ have different class folders")
        return train, val, class_names(train.classes)
    full_train = ImageFolder(str(data.root), _transforms(data, pre, True))
    full_val = ImageFolder(str(data.root), _transforms(data, pre, False))
    n_val = max(1, int(len(full_train) * data.val_fraction))
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = random_split(range(len(full_train)), [len(full_train) - n_val, n_val], generator=gen)
    return (torch.utils.data.Subset(full_train, list(train_idx)), torch.utils.data.Subset(full_val, list(val_idx)),
            class_names(full_train.classes))


def classification_step(model: nn.Module, batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, int]:
    """Cross-entropy (label smoothing 0.1) of one batch."""
    images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
    return nn.functional.cross_entropy(model(images), labels, label_smoothing=0.1), images.shape[0]


@torch.inference_mode()
def evaluate_classifier(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Top-1 and top-5 accuracy (in %) and the image count."""
    model.eval()
    correct1 = correct5 = total = 0
    for images, labels in loader:
        logits = model(images.to(device))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu()
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(dim=1).sum())
        total += labels.numel()
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "images": total}


def train_classifier(
    name: str, model_kwargs: dict[str, Any], data: ClassifyData, cfg: TrainConfig,
    *, resume: Path | None = None, init_weights: Path | None = None, on_step: Callable[[dict], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``name`` on ``data`` (from ``init_weights`` if given: fine-tuning); returns the model
    (eval mode, config updated) and its metrics."""
    gen = seed_everything(cfg.seed)
    pre = PreprocessConfig(input_size=(data.input_size, data.input_size), resize=data.eval_resize)
    train_set, val_set, categories = load_splits(data, pre, cfg.seed)
    model = create_model(name, weights=init_weights, num_classes=len(categories), categories=categories, **model_kwargs)
    model.config = model.config.replace(preprocess=pre)
    model.to(cfg.device)
    dgc = model.config.attention == "dgc"
    step = dgc_classification_step(cfg.epochs * (len(train_set) // cfg.batch_size)) if dgc else classification_step
    trainer, state = run_training(model, cfg, step, train_set, generator=gen, resume=resume, on_step=on_step)
    if dgc:
        finish_dgc(model)
    metrics = evaluate_classifier(model, DataLoader(val_set, batch_size=cfg.batch_size, num_workers=cfg.workers), trainer.device)
    metrics.update(run_summary(state))
    return model.cpu().eval(), metrics
