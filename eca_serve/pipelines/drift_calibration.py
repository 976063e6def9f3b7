"""Recording an entry's attention drift reference from held-out images, through the serving pipeline itself."""

from __future__ import annotations

from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from eca_serve.errors import ConfigError
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.contract import ImageInput
from eca_serve.pipelines.drift import DEFAULT_BINS, DriftReference, build_reference
from eca_serve.repository import DriftSpec, EntryConfig, sha256_file, write_config

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
REFERENCE_FILE = "drift_reference.json"


def image_files(root: Path, limit: int) -> list[Path]:
    """Up to ``limit`` image files below ``root``, in a stable order spread over its sub-folders.

    Raises:
        ConfigError: ``root`` holds no image.
    """
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) below {root}")
    folders: dict[Path, list[Path]] = {}
    for file in files:
        folders.setdefault(file.parent, []).append(file)
    # Round-robin over the class folders of an ImageFolder tree, so any prefix has every class.
    interleaved = [f for group in zip_longest(*folders.values()) for f in group if f is not None]
    return interleaved[:limit]


async def collect_attention(pipeline: ModelPipeline, files: list[Path], chunk: int = 16) -> dict[str, np.ndarray]:
    """Every attention layer of ``files`` as the server computes it: layer name -> weights [N, C]."""
    params = pipeline.params_type.parse({"attention": True, "masks": "none", "top_k": 1})
    per_layer: dict[str, list[np.ndarray]] = {a.name: [] for a in pipeline.config.attention}
    for start in range(0, len(files), chunk):
        inputs = [ImageInput(f.read_bytes(), None, f.name) for f in files[start:start + chunk]]
        for result in await pipeline.run(inputs, params):
            for layer in result.attention or []:
                per_layer[layer.name].append(layer.weights)
    return {name: np.stack(values) for name, values in per_layer.items()}


def save_reference(folder: Path, config: EntryConfig, reference: DriftReference) -> EntryConfig:
    """Write the reference beside the entry's artifacts and record it (with its sha256) in config.json."""
    path = folder / REFERENCE_FILE
    reference.save(path)
    updated = config.model_copy(update={"drift": DriftSpec(file=REFERENCE_FILE, sha256=sha256_file(path),
                                                           images=reference.images, source=reference.source)})
    write_config(folder, updated)
    return updated


async def calibrate(pipeline: ModelPipeline, data: Path, max_images: int, bins: int = DEFAULT_BINS,
                    source: str = "") -> dict[str, Any]:
    """Build and save ``pipeline``'s reference from images below ``data``; a summary of what was written."""
    files = image_files(data, max_images)
    reference = build_reference(await collect_attention(pipeline, files), bins, source or str(data))
    save_reference(pipeline.folder, pipeline.config, reference)
    return {"model": pipeline.config.name, "version": pipeline.config.version, "images": reference.images,
            "layers": len(reference.layers), "bins": reference.bins, "file": str(pipeline.folder / REFERENCE_FILE)}
