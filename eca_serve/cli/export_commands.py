"""``export`` and ``import-official``: write model repository entries with verified parity."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from eca_serve.cli._output import print_json, print_table
from eca_serve.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the export commands."""
    p = sub.add_parser("export", help="export a model to TorchScript/ONNX into models/<name>/<version>")
    p.add_argument("name", help="registered architecture, e.g. eca_resnet50")
    p.add_argument("--weights", type=Path, required=True, help="checkpoint (.pth.tar, state dict, .safetensors)")
    p.add_argument("--out", type=Path, required=True, help="entry folder, e.g. models/my_model/1")
    _common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-official", help="turn an authors' ECA-Net .pth.tar into a repository entry")
    p.add_argument("checkpoint", type=Path, help="the authors' .pth.tar (ECA-Net release)")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--repository", type=Path, default=Path("models"), help="model repository to write into")
    p.add_argument("--version", type=int, default=1, help="entry version: writes REPOSITORY/NAME/VERSION")
    _common(p)
    p.set_defaults(func=cmd_import_official)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formats", default="torchscript,onnx", help="comma-separated artifact formats")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=JSON",
                   help="architecture argument, e.g. --arg 'widths=[16,32,64,128]' (repeatable; default: none)")
    p.add_argument("--json", action="store_true", help="print the entry config as JSON")
    pre = p.add_argument_group("preprocessing of a classifier (each default: what the weights store, else the "
                               "architecture's)")
    stored = "default: as stored"
    pre.add_argument("--input-size", type=int, nargs="+", metavar="PX", help=f"model input: H W, or one side; {stored}")
    pre.add_argument("--resize", type=int, help=f"shorter side before the center crop; {stored}")
    pre.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None, help=f"center crop after the resize; {stored}")
    pre.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"], help=f"resize filter; {stored}")
    pre.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help=f"per-channel mean of [0, 1] RGB; {stored}")
    pre.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help=f"per-channel standard deviation; {stored}")


def with_preprocessing(model: Any, args: argparse.Namespace) -> Any:
    """``model`` with the preprocessing flags that were given replacing fields of its record (validated)."""
    size = args.input_size
    if size is not None and len(size) not in (1, 2):
        raise ConfigError(f"--input-size takes H W or one side, got {size}")
    given = {"size": None if size is None else (size[0], size[-1]), "resize": args.resize, "crop": args.crop,
             "interpolation": args.interpolation, "mean": args.mean, "std": args.std}
    changes = {k: v for k, v in given.items() if v is not None}
    if changes:
        record = model.config.preprocess
        try:
            model.config = model.config.replace(preprocess=type(record).model_validate({**record.record(), **changes}))
        except ValueError as exc:
            raise ConfigError(f"preprocessing flags: {exc}") from None
    return model


def cmd_export(args: argparse.Namespace) -> int:
    from eca_serve.models import create_model

    name, version = _entry_name(args.out)
    model = with_preprocessing(create_model(args.name, weights=args.weights, **_parse_args(args.arg)), args)
    provenance = {"weights": args.weights.name, "command": "export"}
    return _run_export(args, model, args.out, name, version, provenance)


def cmd_import_official(args: argparse.Namespace) -> int:
    from eca_serve.repository import check_safe_name, sha256_file
    from eca_serve.models import create_model, read_checkpoint
    from eca_serve.models.arch_detect import detect_architecture

    check_safe_name(args.name, "model name")
    ckpt = read_checkpoint(args.checkpoint)
    arch, kwargs = detect_architecture(ckpt.state_dict)
    model = with_preprocessing(create_model(arch, weights=args.checkpoint, **kwargs, **_parse_args(args.arg)), args)
    provenance = {"weights": args.checkpoint.name, "sha256": sha256_file(args.checkpoint),
                  "command": "import-official", "arch_field_in_file": str(ckpt.meta.get("arch")),
                  "epoch": _plain(ckpt.meta.get("epoch")), "best_prec1": _plain(ckpt.meta.get("best_prec1"))}
    out = args.repository / args.name / str(args.version)
    return _run_export(args, model, out, args.name, args.version, provenance)


def _run_export(args: argparse.Namespace, model: Any, out: Path, name: str, version: int, provenance: dict) -> int:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from eca_serve.export import ExportOptions, export_model

    options = ExportOptions(name=name, version=version, formats=tuple(f.strip() for f in args.formats.split(",")),
                            provenance=provenance)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), disable=args.json) as bar:
        task = bar.add_task(f"export {name}/{version}", total=None)
        config = export_model(model, out, options, progress=lambda step: bar.update(task, description=f"export {name}/{version}: {step}"))
    if args.json:
        print_json(config.model_dump(mode="json"))
    else:
        _print_parity(config.parity, out)
    return 0


def _print_parity(report: dict, out: Path) -> None:
    rows = [(r["backend"], r["input_shape"], _fmt(r.get("max_abs_probabilities")), _fmt(r.get("max_abs_attention")),
             _fmt(r.get("max_abs_embedding")), json.dumps(r.get("detections")) if r.get("detections") else "",
             "ok" if r["passed"] else "FAIL")
            for r in report["rows"]]
    print_table(f"parity vs eager -> {out}", ["backend", "input", "max|dprob|", "max|dattn|", "max|demb|", "detections", ""], rows)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2e}"


def _entry_name(out: Path) -> tuple[str, int]:
    if not out.name.isdigit() or int(out.name) < 1:
        raise ConfigError(f"--out must end in <name>/<version>, e.g. models/my_model/1; got {out}")
    return out.parent.name, int(out.name)


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    parsed = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
            raise ConfigError(f"--arg must look like key=json_value, got {pair!r}")
        try:
            parsed[key] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[key] = raw
    return parsed


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
