"""Category names shipped with torchvision (no download needed)."""

from __future__ import annotations

from functools import cache


@cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in index order."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@cache
def coco_categories() -> tuple[str, ...]:
    """COCO's 91-index names as torchvision ships them (index 0 = ``__background__``, gaps = ``N/A``)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def default_categories(num_classes: int) -> tuple[str, ...]:
    """ImageNet names for 1,000 classes, else ``class_0 .. class_{n-1}``."""
    if num_classes == 1000:
        return imagenet_categories()
    return tuple(f"class_{i}" for i in range(num_classes))
