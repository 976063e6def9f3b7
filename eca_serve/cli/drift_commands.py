"""``calibrate-drift``: record a repository entry's attention reference for drift monitoring."""

from __future__ import annotations

import argparse
import asyncio
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


def cmd_calibrate_drift(args: argparse.Namespace) -> int:
    from eca_serve.api.app import serving_options
    from eca_serve.pipelines.manager import ModelManager
    from eca_serve.settings import Settings

    name, _, version = args.model.partition(":")
    settings = Settings(model_repository=args.model_repository, models=[name], drift_window=0)
    manager = ModelManager(serving_options(settings))
    print_json(asyncio.run(_calibrate(manager, name, int(version) if version else None, args)))
    return 0


async def _calibrate(manager: Any, name: str, version: int | None, args: argparse.Namespace) -> dict[str, Any]:
    from eca_serve.pipelines.drift_calibration import calibrate

    await manager.load_all()
    try:
        return await calibrate(manager.get(name, version), args.data, args.max_images, args.bins, args.source)
    finally:
        await manager.stop(grace_s=1.0)
