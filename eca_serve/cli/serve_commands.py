"""``serve`` and ``predict``: run the HTTP server, or one local prediction through the same pipeline."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` and ``predict``."""
    p = sub.add_parser("serve", help="serve the model repository over HTTP (settings also from ECA_SERVE_* env)")
    p.add_argument("--model-repository", type=Path, help="default: models/ (ECA_SERVE_MODEL_REPOSITORY)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--grpc-port", type=int, help="gRPC (Open Inference Protocol) port, 0 = off; default 8001 (ECA_SERVE_GRPC_PORT)")
    p.add_argument("--device", help="cpu | cuda | cuda:N")
    p.add_argument("--backend", choices=["onnxruntime", "torchscript", "eager"])
    p.add_argument("--workers", type=int, default=1, help="server processes (each loads every model)")
    p.add_argument("--model", action="append", dest="models", help="serve only this model (repeatable)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("predict", help="classify/detect one image locally with the serving pipeline")
    p.add_argument("image", type=Path)
    p.add_argument("--model", required=True)
    p.add_argument("--model-repository", type=Path, default=Path("models"))
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torchscript", "eager"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--attention", action="store_true", help="include per-layer attention weights")
    p.set_defaults(func=cmd_predict)


def _settings(args: argparse.Namespace) -> Any:
    from eca_serve.settings import Settings

    given = {k: v for k, v in {"model_repository": args.model_repository, "host": args.host, "port": args.port,
                               "device": args.device, "backend": args.backend, "models": args.models}.items() if v}
    if args.grpc_port is not None:  # 0 is a value here: it turns gRPC off
        given["grpc_port"] = args.grpc_port
    return Settings(**given)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from eca_serve.logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_json)
    if args.workers > 1:
        if settings.grpc_port:
            logging.getLogger("eca_serve.server").warning("gRPC is served only with --workers 1; port %d stays closed", settings.grpc_port)
        # Each worker process builds its app from the environment, so pass the settings through it.
        import os

        for key, value in settings.model_dump(exclude_unset=True).items():
            os.environ[f"ECA_SERVE_{key.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
        uvicorn.run("eca_serve.api.app:create_app", factory=True, host=settings.host, port=settings.port,
                    workers=args.workers, log_config=None, timeout_graceful_shutdown=int(settings.grace_period_s))
        return 0
    from eca_serve.api import create_app
    from eca_serve.api.server import serve

    serve(create_app(settings), settings.host, settings.port, settings.grace_period_s, settings.grpc_port)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from eca_serve.pipelines.base import ImageInput
    from eca_serve.pipelines.manager import ModelManager
    from eca_serve.settings import Settings

    from eca_serve.api.app import serving_options

    settings = Settings(model_repository=args.model_repository, backend=args.backend, device=args.device, models=[args.model])
    manager = ModelManager(serving_options(settings))
    image = ImageInput(args.image.read_bytes(), None, args.image.name)
    print(json.dumps(asyncio.run(_predict(manager, args, image)), indent=2))
    return 0


async def _predict(manager: Any, args: argparse.Namespace, image: Any) -> Any:
    from dataclasses import asdict

    from eca_serve.pipelines.classification import ClassificationPipeline
    from eca_serve.pipelines.detection import DetectOptions

    await manager.load_all()
    try:
        pipeline = manager.get(args.model)
        if isinstance(pipeline, ClassificationPipeline):
            result = (await pipeline.classify([image], top_k=args.top_k, attention=args.attention))[0]
        else:
            result = (await pipeline.detect([image], DetectOptions(args.score_threshold), attention=args.attention))[0]
        return json.loads(json.dumps(asdict(result), default=lambda a: a.tolist()))
    finally:
        await manager.stop(grace_s=1.0)
