"""Mean channel attention per class and per layer over a labelled image folder, as the paper's Fig. 7.

The images go through the entry's own serving pipeline (decode, preprocessing, the backend), so the
statistics are those of the served model. The figure is drawn with Pillow: one panel per attention layer,
channel index on x, mean weight on y, one line per class; a legend names the classes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from eca_serve.errors import ConfigError
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.drift_calibration import IMAGE_SUFFIXES, collect_attention
from eca_serve.pipelines.plots import _fonts

PANEL_W, PANEL_H, PAD, COLUMNS = 300, 130, 12, 2
# Okabe-Ito, then Tableau: distinguishable for colour-blind readers for the first eight classes.
_CLASS_COLOURS = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
                  (240, 228, 66), (0, 0, 0), (148, 103, 189), (140, 86, 75), (127, 127, 127), (188, 189, 34)]


@dataclass(frozen=True)
class ClassAttention:
    """Per-class mean attention of one entry.

    Attributes:
        classes: Class names (the sub-folders of the data folder), sorted.
        images: Images read per class, [classes].
        layers: Attention layer names, in the model's order.
        means: ``means[c][l]`` is the mean weight vector [C_l] of layer ``l`` over the images of class ``c``
            (values in 0..1 for ECA/SE); channel counts differ between layers, so it is ragged.
    """

    classes: list[str]
    images: list[int]
    layers: list[str]
    means: list[list[np.ndarray]]

    def to_json(self, model: str, version: int) -> dict[str, Any]:
        """The JSON written by ``eca-serve attention-stats``: ``mean`` is [classes][layers][channels]."""
        return {"model": model, "version": version, "classes": self.classes, "images": self.images,
                "layers": [{"name": n, "channels": int(m.shape[-1])}
                           for n, m in zip(self.layers, self.means[0], strict=True)],
                "mean": [[np.round(m, 6).tolist() for m in per_class] for per_class in self.means]}


def class_folders(data: Path, max_per_class: int) -> dict[str, list[Path]]:
    """Class name -> up to ``max_per_class`` image files of an ImageFolder tree (class sub-folders of images).

    Raises:
        ConfigError: fewer than two class folders with images (per-class curves need classes to compare).
    """
    folders = {}
    for folder in sorted(p for p in Path(data).iterdir() if p.is_dir()) if Path(data).is_dir() else []:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if files:
            folders[folder.name] = files[:max_per_class]
    if len(folders) < 2:
        raise ConfigError(f"{data} must hold one sub-folder of images per class (at least 2), "
                          f"found {sorted(folders) or 'none'}")
    return folders


async def class_attention(pipeline: ModelPipeline, data: Path, max_per_class: int) -> ClassAttention:
    """Mean attention per class and layer over ``data`` through ``pipeline`` (an entry with attention outputs).

    Raises:
        ConfigError: the entry has no attention layers, or ``data`` is not an ImageFolder tree of >= 2 classes.
    """
    if not pipeline.config.attention:
        raise ConfigError(f"{pipeline.config.name} has no attention layers to summarise")
    folders = class_folders(data, max_per_class)
    means, images, layers = [], [], [a.name for a in pipeline.config.attention]
    for files in folders.values():
        per_layer = await collect_attention(pipeline, files)
        means.append([per_layer[name].reshape(len(files), -1).mean(axis=0) for name in layers])
        images.append(len(files))
    return ClassAttention(list(folders), images, layers, means)


def class_attention_png(stats: ClassAttention, title: str) -> bytes:
    """Line plots of ``stats``: a grid of ``COLUMNS`` panels per row, one per layer, one line per class.

    Each panel's y axis spans the range of its layer's class means (printed at its corners), so small
    differences between classes stay visible; x is the channel index, 0 on the left.
    """
    font, title_font = _fonts()
    rows = -(-len(stats.layers) // COLUMNS)
    legend_h = 20 * (-(-len(stats.classes) // 4))
    width = PAD + COLUMNS * (PANEL_W + PAD)
    height = 36 + rows * (PANEL_H + 24) + legend_h + PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((PAD, 8), title, fill="black", font=title_font)
    for index, name in enumerate(stats.layers):
        x0 = PAD + (index % COLUMNS) * (PANEL_W + PAD)
        y0 = 36 + (index // COLUMNS) * (PANEL_H + 24)
        _panel(draw, (x0, y0), name, [per_class[index] for per_class in stats.means], font)
    y = height - legend_h - PAD // 2
    for i, name in enumerate(stats.classes):
        x, row_y = PAD + (i % 4) * (width // 4), y + 20 * (i // 4)
        draw.line([(x, row_y + 7), (x + 22, row_y + 7)], fill=_CLASS_COLOURS[i % len(_CLASS_COLOURS)], width=3)
        draw.text((x + 28, row_y), f"{name} ({stats.images[i]})", fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], name: str, curves: list[np.ndarray], font: Any) -> None:
    """One layer: frame, name, y range, and a polyline per class (curves: [C] each)."""
    x0, y0 = origin
    top = y0 + 16
    draw.text((x0, y0), f"{name} (C={curves[0].size})", fill="black", font=font)
    draw.rectangle([x0, top, x0 + PANEL_W, top + PANEL_H], outline=(160, 160, 160))
    low = float(min(c.min() for c in curves))
    high = float(max(c.max() for c in curves))
    span = max(high - low, 1e-6)
    draw.text((x0 + 3, top + 2), f"{high:.3f}", fill=(90, 90, 90), font=font)
    draw.text((x0 + 3, top + PANEL_H - 14), f"{low:.3f}", fill=(90, 90, 90), font=font)
    for i, curve in enumerate(curves):
        xs = np.linspace(x0 + 1, x0 + PANEL_W - 1, curve.size) if curve.size > 1 else np.array([x0 + PANEL_W / 2])
        ys = top + PANEL_H - 2 - (curve - low) / span * (PANEL_H - 4)
        points = list(zip(xs.tolist(), ys.tolist(), strict=True))
        draw.line(points if len(points) > 1 else points * 2, fill=_CLASS_COLOURS[i % len(_CLASS_COLOURS)], width=1)
