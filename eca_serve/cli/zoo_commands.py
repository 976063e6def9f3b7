"""``models``, ``inspect`` and ``profile``: what the zoo holds and what a model costs.

``profile`` has two modes: ``profile ARCH`` measures a registered architecture (parameters, FLOPs,
PyTorch latency); ``profile NAME[:VERSION] --recommend [--write]`` measures a model repository entry
as the server runs it and recommends (and writes) its config.json ``serving`` block.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from eca_serve.cli._output import print_json, print_table
from eca_serve.cli.surgery_commands import add_surgery_arguments, inserted_attention, print_inserted
from eca_serve.errors import ConfigError
from eca_serve.kinds import Device


def register(sub: argparse._SubParsersAction) -> None:
    """Add the zoo commands to the ``eca-serve`` sub-parsers."""
    p = sub.add_parser("models", help="list registered architectures")
    p.add_argument("--task", choices=["classification", "detection", "instance_segmentation"], help="only this task (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("inspect", help="detect a checkpoint's (or an entry folder's) architecture, load it strictly, "
                       "report its cost and any attention inserted by surgery")
    p.add_argument("checkpoint", type=Path, help="checkpoint file, or a repository entry folder")
    p.add_argument("--input-size", type=int, default=None,
                   help="square input side for FLOPs (default: an entry's own input size, else 224)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("profile", help="cost of a registered architecture, or (--recommend) the serving block of a "
                       "repository entry")
    p.add_argument("name", help="architecture name; with --recommend a repository entry NAME[:VERSION]")
    p.add_argument("--input-size", type=int, default=224, help="architecture mode: square input side")
    p.add_argument("--batch-size", type=int, default=1, help="architecture mode")
    p.add_argument("--iters", type=int, default=10, help="architecture mode: timed forward passes")
    p.add_argument("--device", type=Device, default=Device("cpu"), help="cpu | cuda | cuda:N")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--recommend", action="store_true", help="measure the repository entry NAME[:VERSION] per engine "
                   "and precision as served (img/s, latency per batch size and instance count) and recommend its serving block")
    p.add_argument("--write", action="store_true", help="with --recommend: write the block into the entry's config.json")
    p.add_argument("--model-repository", type=Path, default=Path("models"), help="with --recommend: the model repository")
    p.add_argument("--batch-sizes", default="1,2,4,8", help="with --recommend: batch sizes to measure")
    p.add_argument("--instance-counts", default="1,2", help="with --recommend: instance counts to measure")
    p.add_argument("--seconds", type=float, default=1.0, help="with --recommend: measuring time per setting")
    p.add_argument("--rounds", type=int, default=1, help="with --recommend: interleaved rounds per setting (median, spread)")
    p.add_argument("--engines", default="auto", help="with --recommend: onnxruntime,openvino (auto: every engine "
                   "installed; bf16 too where the CPU has AMX or AVX512_BF16); the winner goes into the serving block")
    add_surgery_arguments(p, both=True)
    p.set_defaults(func=cmd_profile)


def cmd_models(args: argparse.Namespace) -> int:
    from eca_serve.models import get_entry, list_models

    rows = [get_entry(n) for n in list_models(task=args.task)]
    data = [{"name": e.name, "task": e.task, "attention": e.attention, "params": _param_count(e),
             "doc": plain_summary(e.builder.__doc__)} for e in rows]
    if args.json:
        print_json(data)
    else:
        print_table("eca-serve models", ["name", "task", "attention", "params", "description"], [list(d.values()) for d in data])
    return 0


def plain_summary(doc: str | None) -> str:
    """The first line of a docstring without reStructuredText markup (torchvision's builders link papers
    as ```Title <url>`__``; ours quote code as ````name````)."""
    line = (doc or "").strip().split("\n")[0]
    line = re.sub(r"`([^`<]*?)\s*<[^>]*>`_{0,2}", r"\1", line)  # `Title <url>`__ -> Title
    return line.replace("``", "").replace("`", "").strip()


def _param_count(entry: Any) -> int:
    """Parameters of a model (classifier or detector) at its defaults, built on the meta device (no memory, no init cost)."""
    import torch

    try:
        with torch.device("meta"):
            model = entry.builder()
    except (NotImplementedError, RuntimeError):  # builders that copy data at init (torchvision's) need real tensors
        model = entry.builder()
    return sum(p.numel() for p in model.parameters())


def cmd_inspect(args: argparse.Namespace) -> int:
    from eca_serve.introspect import attention_layers
    from eca_serve.models import create_model, read_checkpoint
    from eca_serve.models.arch_detect import detect_architecture
    from eca_serve.models.profile import measure

    entry_size = None
    if args.checkpoint.is_dir():  # a repository entry: its weights carry the config
        args.checkpoint, entry_size = entry_weights(args.checkpoint)
    ckpt = read_checkpoint(args.checkpoint)
    name, kwargs = _stored_architecture(ckpt) or detect_architecture(ckpt.state_dict)
    model = create_model(name, weights=args.checkpoint, **kwargs)
    inserted = inserted_attention(model)
    size = (args.input_size, args.input_size) if args.input_size else entry_size or (224, 224)
    cost = measure(model, size)
    layers = attention_layers(model)
    report = {
        "checkpoint": str(args.checkpoint),
        "architecture": name,
        "arch_field_in_file": ckpt.meta.get("arch"),
        "num_classes": model.config.num_classes,
        "eca_kernel_sizes": model.config.extra.get("k_size"),
        "attention": model.config.attention,
        "attention_layers": len(layers),
        **_cost_fields(cost),
        "loaded": "strict",
    }
    if inserted:
        report["inserted_attention"] = inserted if args.json else f"{len(inserted)} modules by surgery (table below)"
    _print_report(args, f"inspect {args.checkpoint.name}", report)
    print_inserted(inserted, args.json)
    return 0


def entry_weights(folder: Path) -> tuple[Path, tuple[int, int] | None]:
    """The weights of a repository entry and its input (H, W): an INT8 entry (ONNX only) uses its FP32 parent's.

    Raises:
        ConfigError: the entry (or its parent) has no ``weights.safetensors``.
    """
    from eca_serve.repository import parse_config

    config = parse_config(folder)
    source = folder.parent / str(config.quantization.parent_version) if config.quantization is not None else folder
    weights = source / "weights.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{weights} not found: inspect needs the PyTorch weights of {folder}"
                          + (f" (an INT8 entry: its FP32 parent, version {source.name})" if source != folder else ""))
    return weights, tuple(config.input.size) if config.input.size is not None else None


def _stored_architecture(ckpt: Any) -> tuple[str, dict[str, Any]] | None:
    """(name, build arguments) from the config our exports store with the weights, when it names a
    registered model (e.g. ``torchvision:resnet18`` with its surgery spec); else None."""
    from eca_serve.models import list_models

    stored = ckpt.config or {}
    if stored.get("name") in list_models():
        return stored["name"], {}
    return None


def cmd_profile(args: argparse.Namespace) -> int:
    if args.recommend:
        from eca_serve.cli.profile_entry import cmd_profile_entry

        return cmd_profile_entry(args)
    if args.write:
        raise ConfigError("--write stores a recommended serving block: it needs --recommend")
    if args.attention:
        from eca_serve.cli.surgery_commands import cmd_profile_surgery

        return cmd_profile_surgery(args)
    from eca_serve.models import create_model
    from eca_serve.models.profile import measure

    model = create_model(args.name)
    report: dict[str, Any] = {"model": args.name, **_cost_fields(measure(model, (args.input_size, args.input_size)))}
    report.update(_time_forward(model, args))
    _print_report(args, f"profile {args.name}", report)
    return 0


def _cost_fields(cost: Any) -> dict[str, Any]:
    return {
        "params": cost.params,
        "params_M_2^20": round(cost.params_m, 2),
        "eca_params": cost.attention_params,
        "input_size": list(cost.input_size),
        "macs": cost.macs,
        "GFLOPs_macs_2^30": round(cost.gflops, 3),
    }


def _time_forward(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = torch.device(args.device)
    model = model.to(device)
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    call = (lambda: model([img for img in x])) if model.config.task != "classification" else (lambda: model(x))
    with torch.inference_mode():
        call()  # warm-up: allocator, kernels
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.iters):
            call()
        _sync(device)
    seconds = (time.perf_counter() - start) / args.iters
    return {"device": str(device), "batch_size": args.batch_size, "latency_ms": round(seconds * 1e3, 2),
            "images_per_s": round(args.batch_size / seconds, 1), "threads": torch.get_num_threads()}


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _print_report(args: argparse.Namespace, title: str, report: dict[str, Any]) -> None:
    if args.json:
        print_json(report)
    else:
        print_table(title, ["field", "value"], [(k, v) for k, v in report.items()])
