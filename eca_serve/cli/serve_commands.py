"""``serve`` and ``predict``: run the HTTP server, or one local prediction through the same pipeline."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from eca_serve.kinds import BACKEND_CHOICES, Device


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` and ``predict``."""
    p = sub.add_parser("serve", help="serve the model repository over HTTP (settings also from ECA_SERVE_* env)")
    p.add_argument("--model-repository", type=Path, help=_env_default("model_repository"))
    p.add_argument("--host", help=f"address to listen on; {_env_default('host')}")
    p.add_argument("--port", type=int, help=f"HTTP port; {_env_default('port')}")
    p.add_argument("--grpc-port", type=int, help=f"gRPC (Open Inference Protocol) port, 0 = off; {_env_default('grpc_port')}")
    p.add_argument("--device", type=Device, help=f"cpu | cuda | cuda:N; {_env_default('device')}")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help=_env_default("backend"))
    p.add_argument("--workers", type=int, default=1, help="only 1: uvicorn's worker processes would skip the drain on "
                   "SIGTERM (in-flight requests cut off); scale with more containers or processes behind a load balancer")
    p.add_argument("--model", action="append", dest="models", help="serve only this model (repeatable; default: all)")
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"],
                   help=f"none: what is there at start; explicit: + admin load/unload; poll: rescan the repository; "
                   f"{_env_default('model_control_mode')}")
    p.add_argument("--repository-poll-secs", type=float, help=f"poll mode's scan interval; {_env_default('repository_poll_secs')}")
    p.add_argument("--no-ui", dest="ui", action="store_false", default=None,
                   help="no demo page at / (it answers 404); default: the page is on (ECA_SERVE_UI)")
    p.add_argument("--tracing", action="store_true", default=None,
                   help="OpenTelemetry traces, configured by the OTEL_* variables (ECA_SERVE_TRACING; needs eca-serve[tracing])")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("predict", help="classify/detect one image locally with the serving pipeline")
    p.add_argument("image", type=Path, help="an image file (JPEG, PNG, WebP, BMP, GIF, TIFF)")
    p.add_argument("--model", required=True, help="a model name in the repository")
    p.add_argument("--model-repository", type=Path, default=Path("models"), help="the model repository")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference backend (auto: the entry's serving.engine, else the rule of eca_serve.runtime.engines)")
    p.add_argument("--device", type=Device, default=Device("cpu"), help="cpu | cuda | cuda:N")
    p.add_argument("--top-k", type=int, default=None, help="classifiers: classes to print (default: min(5, classes))")
    p.add_argument("--score-threshold", type=float, default=0.5, help="detectors: lowest score kept")
    p.add_argument("--masks", default="rle", choices=["rle", "polygon", "none"], help="detectors: mask format")
    p.add_argument("--attention", action="store_true", help="print the attention endpoint's body (per-layer weights)")
    p.set_defaults(func=cmd_predict)


def _env_default(field: str) -> str:
    """"default: <value> (ECA_SERVE_<FIELD>)" from the settings, so the help never drifts from them."""
    from eca_serve.settings import Settings

    return f"default: {Settings.model_fields[field].default} (ECA_SERVE_{field.upper()})"


def _settings(args: argparse.Namespace) -> Any:
    from eca_serve.settings import Settings

    given = {k: v for k, v in {"model_repository": args.model_repository, "host": args.host, "port": args.port,
                               "device": args.device, "backend": args.backend, "models": args.models,
                               "model_control_mode": args.model_control_mode,
                               "repository_poll_secs": args.repository_poll_secs}.items() if v}
    if args.grpc_port is not None:  # 0 is a value here: it turns gRPC off
        given["grpc_port"] = args.grpc_port
    if args.ui is not None:
        given["ui"] = args.ui
    if args.tracing:
        given["tracing"] = True
    return Settings(**given)


def cmd_serve(args: argparse.Namespace) -> int:
    from eca_serve.errors import ConfigError

    if args.workers != 1:
        # uvicorn's multiprocess supervisor runs plain uvicorn servers, not our `Server`: on SIGTERM they
        # would stop without answering the requests in flight.
        raise ConfigError(f"--workers {args.workers}: only 1 worker per process is supported (the SIGTERM drain "
                          "covers one server); run more processes or containers behind a load balancer")
    from eca_serve.api import create_app
    from eca_serve.api.server import check_ports, serve
    from eca_serve.logs import configure_logging

    settings = _settings(args)
    check_ports(settings.host, [settings.port, settings.grpc_port])  # before the model-loading logs bury the error
    configure_logging(settings.log_level, settings.log_json)
    serve(create_app(settings), settings.host, settings.port, settings.grace_period_s, settings.grpc_port)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Print exactly the body the v1 API answers for this image (classify, detect, or attention)."""
    from eca_serve.api.app import serving_options
    from eca_serve.errors import ConfigError
    from eca_serve.pipelines.manager import ModelManager
    from eca_serve.settings import Settings

    if not args.image.is_file():  # before loading any model: a typo should not cost seconds and a traceback
        raise ConfigError(f"no such image file: {args.image}")
    settings = Settings(model_repository=args.model_repository, backend=args.backend, device=args.device, models=[args.model])
    manager = ModelManager(serving_options(settings))
    print(asyncio.run(_predict(manager, args)).model_dump_json(indent=2))
    return 0


async def _predict(manager: Any, args: argparse.Namespace) -> Any:
    from eca_serve.api import convert
    from eca_serve.pipelines.contract import ImageInput, StageTimes

    await manager.load_all()
    try:
        pipeline = manager.get(args.model)
        values = {"top_k": args.top_k, "score_threshold": args.score_threshold, "attention": args.attention,
                  "masks": "none" if args.attention else args.masks}
        times = StageTimes()
        results = await pipeline.run([ImageInput(args.image.read_bytes(), None, args.image.name)], pipeline.params_type.parse(values), times)
        if args.attention:
            return convert.attention_body(pipeline.config, results, times)
        body = convert.classify_body if pipeline.action == "classify" else convert.detect_body
        return body(pipeline.config, results, times)
    finally:
        await manager.stop(grace_s=1.0)
