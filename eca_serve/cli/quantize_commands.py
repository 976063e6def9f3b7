"""``quantize`` (an FP32 entry -> a new INT8 version) and ``quantization`` (show an entry's report)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from eca_serve.cli._output import print_json, print_table
from eca_serve.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the quantization commands to the ``eca-serve`` sub-parsers."""
    p = sub.add_parser("quantize", help="INT8 static quantization of a repository entry into a new version")
    p.add_argument("model", metavar="NAME[:VERSION]", help="the FP32 entry (default version: newest FP32)")
    p.add_argument("--model-repository", type=Path, default=Path("models"), help="the model repository")
    p.add_argument("--calibration", type=Path, required=True, help="folder of calibration images (~100)")
    p.add_argument("--eval", type=Path, help="held-out ImageFolder (class folders named as the categories; default: none, no accuracy check)")
    p.add_argument("--out-version", type=int, help="version to write (default: newest + 1)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax", help="calibration method")
    p.add_argument("--max-drop", type=float, default=0.5, help="largest top-1 drop accepted, in points (default 0.5)")
    p.add_argument("--quantize-attention", action="store_true",
                   help="quantize the attention weights' nodes too (default: Conv1d / SE convs and sigmoid stay float32; "
                        "the gates' pool and Mul are int8 either way)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    d = p.add_argument_group("detectors", "--calibration and --eval are COCO folders (annotations.json + images/)")
    d.add_argument("--max-ap-drop", type=float, default=1.0, help="largest box or mask AP drop accepted, in points (default 1)")
    d.add_argument("--scope", default="backbone_fpn", choices=["backbone_fpn", "backbone", "fpn_adds_float", "ends_float", "with_rpn_head"],
                   help="nodes in INT8 (default: backbone and FPN convolutions, adds, ReLU, max-pool)")
    d.add_argument("--per-tensor", action="store_true", help="int8 weights per tensor (default: per output channel)")
    d.add_argument("--calibration-images", type=int, default=32, help="calibration scenes used (default 32)")
    d.add_argument("--eval-images", type=int, help="score the first N held-out scenes (default: all)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("quantization", help="show the quantization report of an INT8 entry")
    p.add_argument("model", metavar="NAME[:VERSION]", help="an INT8 entry (default version: newest)")
    p.add_argument("--model-repository", type=Path, default=Path("models"), help="the model repository")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_quantization)


def parse_model(text: str) -> tuple[str, int | None]:
    """``"name"`` -> (name, None); ``"name:3"`` -> (name, 3)."""
    name, _, version = text.partition(":")
    if version and not version.isdigit():
        raise ConfigError(f"invalid model {text!r}: use NAME or NAME:VERSION")
    return name, int(version) if version else None


def cmd_quantize(args: argparse.Namespace) -> int:
    from eca_serve.quantize.detector_entry import is_detector_entry
    from eca_serve.quantize.entry import QuantizeOptions, quantize_entry

    name, version = parse_model(args.model)
    if is_detector_entry(args.model_repository, name, version):
        return _quantize_detector(args, name, version)
    options = QuantizeOptions(calibration=args.calibration, eval=args.eval, method=args.method,
                              out_version=args.out_version, max_drop=args.max_drop,
                              attention_in_float=not args.quantize_attention,
                              command="eca-serve " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "quantize")
    result = quantize_entry(args.model_repository, name, version, options)
    report = {"folder": str(result.folder), **result.report.model_dump(mode="json")}
    _print(args, f"quantize {args.model} -> {result.folder}", report)
    if not result.accepted:
        drops = {"onnxruntime": result.report.top1_drop, **({"openvino": result.report.openvino.top1_drop} if result.report.openvino else {})}
        print(f"refused: top-1 drop {', '.join(f'{d} points on {e}' for e, d in drops.items())} > --max-drop {args.max_drop}; "
              f"no entry written, report in {result.folder / 'quantization.json'}", file=sys.stderr)
        return 2
    return 0


def _quantize_detector(args: argparse.Namespace, name: str, version: int | None) -> int:
    from eca_serve.quantize.detector import DetectorSetting
    from eca_serve.quantize.detector_entry import DetectorQuantizeOptions, quantize_detector_entry

    if args.eval is None:
        raise ConfigError("detectors need --eval: a held-out COCO folder (annotations.json + images/) to score AP on")
    setting = DetectorSetting(args.method, not args.per_tensor, args.scope, args.calibration_images)
    options = DetectorQuantizeOptions(calibration=args.calibration, eval=args.eval, setting=setting,
                                      eval_images=args.eval_images, max_ap_drop=args.max_ap_drop, out_version=args.out_version,
                                      command="eca-serve " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "quantize")
    result = quantize_detector_entry(args.model_repository, name, version, options)
    _print(args, f"quantize {args.model} -> {result.folder}", {"folder": str(result.folder), **result.report.to_json()})
    if not result.accepted:
        print(f"refused: AP drop {result.report.ap_drop_points} points > --max-ap-drop {args.max_ap_drop}; "
              f"no entry written, report in {result.folder / 'quantization.json'}", file=sys.stderr)
        return 2
    return 0


def cmd_quantization(args: argparse.Namespace) -> int:
    from eca_serve.repository import list_entries, read_config

    name, version = parse_model(args.model)
    versions = {v: f for n, v, f in list_entries(args.model_repository) if n == name}
    if not versions or (version is not None and version not in versions):
        raise ConfigError(f"no entry {args.model} in {args.model_repository}")
    config = read_config(versions[version if version is not None else max(versions)])
    if config.quantization is None and "quantization" in config.metrics:  # detectors: AP report in metrics
        _print(args, f"{config.name}:{config.version} ({config.precision})", config.metrics["quantization"])
        return 0
    if config.quantization is None:
        raise ConfigError(f"{config.name}:{config.version} is {config.precision}: it has no quantization report")
    _print(args, f"{config.name}:{config.version} ({config.precision})", config.quantization.model_dump(mode="json"))
    return 0


def _print(args: argparse.Namespace, title: str, report: dict[str, Any]) -> None:
    if args.json:
        print_json(report)
    else:
        print_table(title, ["field", "value"], [(k, v) for k, v in report.items()])
