"""Calibration and evaluation images, decoded and preprocessed exactly as the server does."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from eca_serve.errors import ConfigError
from eca_serve.repository import EntryConfig

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# `eca-serve data shapes` names class folders "00_circle": an index prefix keeps ImageFolder order.
_PREFIXED = re.compile(r"^\d+_(.+)$")


def image_files(root: Path) -> list[Path]:
    """Every image below ``root`` (any depth), sorted by path.

    Raises:
        ConfigError: ``root`` is not a folder or holds no image.
    """
    if not Path(root).is_dir():
        raise ConfigError(f"{root} is not a folder")
    files = sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) below {root}")
    return files


def class_index(folder_name: str, categories: list[str]) -> int | None:
    """Index of the category a class folder names (``star`` or ``05_star``), None if it names none."""
    if folder_name in categories:
        return categories.index(folder_name)
    match = _PREFIXED.match(folder_name)
    if match and match.group(1) in categories:
        return categories.index(match.group(1))
    return None


def labels_of(files: list[Path], root: Path, categories: list[str]) -> np.ndarray | None:
    """int64 [N] class indices from ImageFolder layout (``root/<category>/<image>``), else None.

    None when any image does not sit in a folder named after a category, so an unlabelled folder
    is never half-scored.
    """
    labels = []
    for file in files:
        parts = file.relative_to(root).parts
        index = class_index(parts[0], categories) if len(parts) == 2 else None
        if index is None:
            return None
        labels.append(index)
    return np.asarray(labels, dtype=np.int64)


def load_inputs(files: list[Path], config: EntryConfig) -> np.ndarray:
    """float32 [N, 3, H, W]: each file through ``decode_image`` + ``preprocess_classification``.

    The server's own functions with the entry's ``config.input``, so calibration statistics and
    accuracy are those of served requests.
    """
    from eca_serve.pipelines.images import DecodeLimits, decode_image
    from eca_serve.pipelines.preprocess import decode_target, preprocess_classification

    if config.input.layout != "NCHW":
        raise ConfigError(f"{config.name}: only classifiers (NCHW input) are quantized, got {config.input.layout}")
    limits, target = DecodeLimits(), decode_target(config.input)
    inputs = []
    for file in files:
        decoded = decode_image(file.read_bytes(), limits=limits, target=target)
        inputs.append(preprocess_classification(decoded, config.input))
    shapes = {x.shape for x in inputs}
    if len(shapes) != 1:
        raise ConfigError(f"{config.name}: preprocessing gives several input shapes {sorted(shapes)}; set input.size and crop")
    return np.stack(inputs)
