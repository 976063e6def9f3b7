"""Surgery in the CLI: ``train classify --attention``, ``profile ARCH --attention`` and ``inspect`` rows.

``profile torchvision:resnet18 --attention both --min-channels 64`` builds the network without surgery,
with ECA and with SE, and prints parameters, FLOPs and latency of each with the change against the
original: the cost of the surgery made visible before anyone trains it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from eca_serve.cli._output import print_json, print_table
from eca_serve.errors import ConfigError

TORCHVISION_PREFIX = "torchvision:"


def add_surgery_arguments(p: argparse.ArgumentParser, *, both: bool = False) -> None:
    """``--attention`` and the options that choose where and how attention is inserted."""
    kinds = ["eca", "se", "both"] if both else ["eca", "se"]
    p.add_argument("--attention", choices=kinds, help="insert this channel attention into a torchvision:<arch> model (default: none)")
    p.add_argument("--min-channels", type=int, default=None,
                   help="insert after every Conv2d with at least this many outputs (default 128, as Composer)")
    p.add_argument("--attention-paths", default=None, help="or after exactly these Conv2d paths (comma-separated; default: by --min-channels)")
    p.add_argument("--k-size", type=int, default=None, help="ECA: fixed kernel (default: the paper's adaptive rule)")
    p.add_argument("--reduction", type=int, default=16, help="SE: reduction ratio")
    p.add_argument("--latent-channels", type=float, default=None, help="SE: hidden width (< 1: fraction of C; default: C / --reduction)")
    p.add_argument("--attention-init", choices=["identity", "paper"], default="identity",
                   help="identity: gate exactly 1 at first (output unchanged); paper: plain sigmoid gate")


def surgery_request(args: argparse.Namespace, model: str, kind: str | None = None) -> dict[str, Any] | None:
    """The ``surgery`` build argument the options ask for (None without ``--attention``)."""
    kind = kind or args.attention
    if kind is None:
        return None
    if not model.startswith(TORCHVISION_PREFIX):
        raise ConfigError(f"--attention inserts attention into torchvision:<arch> models, not {model!r}")
    request: dict[str, Any] = {"kind": kind, "k_size": args.k_size, "reduction": args.reduction,
                               "latent_channels": args.latent_channels, "init": args.attention_init}
    if args.attention_paths:
        request["paths"] = [p.strip() for p in args.attention_paths.split(",") if p.strip()]
    else:
        request["min_channels"] = 128 if args.min_channels is None else args.min_channels
    return request


def cmd_profile_surgery(args: argparse.Namespace) -> int:
    """Parameters, FLOPs and latency without surgery and with each requested kind."""
    import torch

    from eca_serve.models import create_model
    from eca_serve.models.profile import count_macs

    kinds = ["eca", "se"] if args.attention == "both" else [args.attention]
    models = {"none": create_model(args.name)}
    models.update({k: create_model(args.name, surgery=surgery_request(args, args.name, k)) for k in kinds})
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size)
    times = _interleaved_latency(models, x, args.iters)
    latency = {name: statistics.median(t) for name, t in times.items()}
    base_params, base_macs = _params(models["none"]), count_macs(models["none"], (args.input_size, args.input_size))
    rows = []
    for name, model in models.items():
        params, macs = _params(model), count_macs(model, (args.input_size, args.input_size))
        rows.append({"attention": name, "inserted": len(model.attention_layers), "params": params,
                     "params_added": params - base_params,
                     "params_delta_%": round(100 * (params - base_params) / base_params, 3),
                     "GFLOPs_macs_2^30": round(macs / 2**30, 4), "flops_delta_%": round(100 * (macs - base_macs) / base_macs, 3),
                     "latency_ms": round(latency[name], 2),
                     "latency_range_ms": f"{min(times[name]):.2f}-{max(times[name]):.2f}",
                     "latency_delta_%": round(100 * (latency[name] - latency["none"]) / latency["none"], 1),
                     **_paired_delta(times[name], times["none"])})
    title = f"profile {args.name} surgery (input {args.input_size}, batch {args.batch_size}, {torch.get_num_threads()} threads)"
    print_json(rows) if args.json else print_table(title, list(rows[0]), [list(r.values()) for r in rows])
    return 0


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _paired_delta(times: list[float], base: list[float]) -> dict[str, Any]:
    """Change against the original within each round (adjacent runs, so slow load drift cancels):
    median and the 10th-90th percentile range of the per-round ratios, in %."""
    ratios = [100 * (t / b - 1) for t, b in zip(times, base)]
    deciles = statistics.quantiles(ratios, n=10) if len(ratios) > 1 else ratios * 9
    lo, hi = deciles[0], deciles[-1]
    return {"paired_delta_%": round(statistics.median(ratios), 1), "paired_p10_p90_%": f"{lo:+.1f} to {hi:+.1f}"}


def _interleaved_latency(models: dict[str, Any], x: Any, iters: int) -> dict[str, list[float]]:
    """ms of each forward of each model, per round; the models take turns so that load changes hit all alike."""
    import torch

    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model.eval()(x)  # warm-up
        for _ in range(max(iters, 1)):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def inserted_attention(model: Any) -> list[dict[str, Any]]:
    """Rows for ``inspect``: where surgery inserted attention (empty for a model without surgery)."""
    from eca_serve.models.surgery import describe

    if getattr(model, "surgery_spec", None) is None:
        return []
    return describe(model)


def print_inserted(rows: list[dict[str, Any]], json_mode: bool) -> None:
    """Table of inserted attention modules (nothing in JSON mode: the report holds them)."""
    if rows and not json_mode:
        print_table("attention inserted by surgery", list(rows[0]), [list(r.values()) for r in rows])
