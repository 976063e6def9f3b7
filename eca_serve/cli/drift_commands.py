"""``calibrate-drift`` (an entry's attention reference for drift monitoring) and ``attention-stats`` (per class)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from eca_serve.cli._output import print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``calibrate-drift``."""
    p = sub.add_parser("calibrate-drift", help="record an entry's attention reference (held-out images) for /drift")
    p.add_argument("model", help="NAME or NAME:VERSION of a repository entry (default version: the newest)")
    p.add_argument("--data", type=Path, required=True, help="folder of held-out images like those the model will see")
    p.add_argument("--model-repository", type=Path, default=Path("models"), help="the model repository")
    p.add_argument("--max-images", type=int, default=500, help="most images read from --data")
    p.add_argument("--bins", type=int, default=10, help="equal-mass bins of the per-image distance histogram")
    p.add_argument("--source", default="", help="how the images were made, recorded in config.json (default: --data)")
    p.set_defaults(func=cmd_calibrate_drift)

    p = sub.add_parser("attention-stats", help="mean attention per class and layer over an ImageFolder: JSON + PNG")
    p.add_argument("model", help="NAME or NAME:VERSION of a repository entry (default version: the newest)")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder: one sub-folder of images per class")
    p.add_argument("--out", type=Path, default=Path("attention_stats"), help="writes OUT.json and OUT.png")
    p.add_argument("--model-repository", type=Path, default=Path("models"), help="the model repository")
    p.add_argument("--max-per-class", type=int, default=200, help="most images read per class")
    p.set_defaults(func=cmd_attention_stats)


def _manager(args: argparse.Namespace) -> tuple[Any, str, int | None]:
    """A model manager serving only the entry named by ``args.model`` (no drift monitoring), its name, version."""
    from eca_serve.pipelines.manager import ModelManager, serving_options
    from eca_serve.settings import Settings

    name, _, version = args.model.partition(":")
    settings = Settings(model_repository=args.model_repository, models=[name], drift_window=0)
    return ModelManager(serving_options(settings)), name, int(version) if version else None


def cmd_calibrate_drift(args: argparse.Namespace) -> int:
    manager, name, version = _manager(args)
    print_json(asyncio.run(_calibrate(manager, name, version, args)))
    return 0


def cmd_attention_stats(args: argparse.Namespace) -> int:
    manager, name, version = _manager(args)
    print_json(asyncio.run(_attention_stats(manager, name, version, args)))
    return 0


async def _attention_stats(manager: Any, name: str, version: int | None, args: argparse.Namespace) -> dict[str, Any]:
    from eca_serve.pipelines.class_attention import class_attention, class_attention_png

    await manager.load_all()
    try:
        pipeline = manager.get(name, version)
        stats = await class_attention(pipeline, args.data, args.max_per_class)
    finally:
        await manager.stop(grace_s=1.0)
    config = pipeline.config
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out.with_suffix(".json"), args.out.with_suffix(".png")
    json_path.write_text(json.dumps(stats.to_json(config.name, config.version)))
    title = f"{config.name} v{config.version}: mean channel attention per class ({sum(stats.images)} images)"
    png_path.write_bytes(class_attention_png(stats, title))
    return {"model": config.name, "version": config.version, "classes": len(stats.classes),
            "layers": len(stats.layers), "images": sum(stats.images), "json": str(json_path), "png": str(png_path)}


async def _calibrate(manager: Any, name: str, version: int | None, args: argparse.Namespace) -> dict[str, Any]:
    from eca_serve.pipelines.drift_calibration import calibrate

    await manager.load_all()
    try:
        return await calibrate(manager.get(name, version), args.data, args.max_images, args.bins, args.source)
    finally:
        await manager.stop(grace_s=1.0)
