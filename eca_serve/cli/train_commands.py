"""``train classify|detect`` and ``data shapes``: train on your data or on the procedural Shapes set."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from eca_serve.cli._output import print_json, print_table
from eca_serve.cli.export_commands import _entry_name, _parse_args
from eca_serve.cli.surgery_commands import add_surgery_arguments, surgery_request


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``data``."""
    train = sub.add_parser("train", help="train a registered model").add_subparsers(dest="task", required=True, metavar="TASK")
    p = train.add_parser("classify", help="classifier on an ImageFolder tree (train/ + val/, or split off)")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root: class folders, or train/ and val/")
    p.add_argument("--model", default="eca_resnet18", help="registered architecture (eca-serve models)")
    p.add_argument("--input-size", type=int, default=224, help="square training crop side in pixels")
    p.add_argument("--resize", type=int, default=None, help="eval shorter side before crop (default input/0.875)")
    p.add_argument("--augment", choices=["standard", "light", "flip"], default="standard",
                   help="training augmentation: standard (crops, flip, jitter), light (flip, jitter), flip (flip only)")
    add_surgery_arguments(p)
    _common(p)
    p.set_defaults(func=cmd_train_classify)

    p = train.add_parser("detect", help="detector on COCO-format annotations")
    p.add_argument("--images", type=Path, required=True, help="folder of training images")
    p.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON of --images")
    p.add_argument("--val-images", type=Path, help="folder of validation images (default: none, no COCO evaluation)")
    p.add_argument("--val-annotations", type=Path, help="COCO instances JSON of --val-images (default: none)")
    p.add_argument("--model", default="maskrcnn_eca_resnet18_fpn", help="registered detector architecture")
    add_surgery_arguments(p)
    _common(p)
    p.set_defaults(func=cmd_train_detect)

    p = sub.add_parser("data", help="generate datasets").add_subparsers(dest="dataset", required=True, metavar="DATASET")
    s = p.add_parser("shapes", help="the procedural Shapes dataset (ImageFolder or COCO)")
    s.add_argument("--kind", choices=["classify", "detect"], required=True, help="classify: ImageFolder; detect: COCO")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--count", type=int, required=True, help="number of images to generate")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    s.add_argument("--size", type=int, default=None, help="image side in pixels (default: 64 for classify, 128 for detect)")
    s.set_defaults(func=cmd_data_shapes)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arg", action="append", default=[], metavar="KEY=JSON", help="architecture argument (repeatable; default: none)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=32, help="images per optimiser step")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (after warm-up)")
    p.add_argument("--weight-decay", type=float, default=5e-5, help="L2 weight decay")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd", help="optimiser")
    p.add_argument("--schedule", choices=["cosine", "step"], default="cosine", help="learning-rate schedule after warm-up")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision (cuda)")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    p.add_argument("--seed", type=int, default=0, help="random seed of weights, shuffling and augmentation")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint folder (last.pt); default: runs/train, or runs/train2, 3, ... when taken")
    p.add_argument("--resume", type=Path, help="continue from a last.pt (same run: optimiser and schedule too; default: none)")
    p.add_argument("--init-weights", type=Path, help="start from these weights with a fresh optimiser (fine-tuning; default: none)")
    p.add_argument("--clip-grad", type=float, default=0.0, help="clip the gradient norm to this (0 = off)")
    p.add_argument("--export-to", type=Path, help="write a repository entry, e.g. models/shapes_classifier/1 (default: none)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def _stderr_console() -> Any:
    """Progress goes to stderr: stdout stays the one JSON line scripts read."""
    from rich.console import Console

    return Console(stderr=True)


def _train_config(args: argparse.Namespace) -> Any:
    from eca_serve.training import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       optimizer=args.optimizer, schedule=args.schedule, warmup_steps=args.warmup_steps,
                       device=args.device, amp=args.amp, workers=args.workers, seed=args.seed,
                       out_dir=str(args.out), clip_grad=args.clip_grad)


def cmd_train_classify(args: argparse.Namespace) -> int:
    from eca_serve.training.classify import ClassifyData, check_layout, train_classifier

    check_layout(args.data)  # before building a model: a one-class layout is a mistake, not a run
    data = ClassifyData(args.data, args.input_size, args.resize, augment=args.augment)
    model_kwargs = _parse_args(args.arg)
    surgery = surgery_request(args, args.model)
    if surgery is not None:
        model_kwargs["surgery"] = surgery
    return _train(args, lambda on_step: train_classifier(args.model, model_kwargs, data, _train_config(args),
                                                         resume=args.resume, init_weights=args.init_weights, on_step=on_step))


def cmd_train_detect(args: argparse.Namespace) -> int:
    from eca_serve.training.detect import DetectData, train_detector

    data = DetectData(args.images, args.annotations, args.val_images, args.val_annotations)
    model_kwargs = _parse_args(args.arg)
    surgery = surgery_request(args, args.model)
    if surgery is not None:  # on the backbone body of torchvision:<detector>
        model_kwargs["surgery"] = surgery
    return _train(args, lambda on_step: train_detector(args.model, model_kwargs, data, _train_config(args),
                                                      resume=args.resume, init_weights=args.init_weights, on_step=on_step))


def training_progress(console: Any = None, disable: bool = False, get_time: Callable[[], float] | None = None) -> Any:
    """A rich bar that fits 80 columns: epoch, bar, step/total, time left, loss and speed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                    TimeRemainingColumn(compact=True, elapsed_when_finished=True), TextColumn("{task.fields[info]}"),
                    console=console, disable=disable, get_time=get_time)


def report_step(bar: Any, task: Any, s: dict, epochs: int) -> None:
    """Show one ``on_step`` report of `eca_serve.training.loop.Trainer.fit` on ``bar``."""
    if bar.tasks[0].total is None:  # the first report starts the clock: a resumed run's earlier steps are not speed
        bar.reset(task, total=s["total_steps"], completed=s["step"] - 1)
    bar.update(task, description=f"epoch {s['epoch']}/{epochs}", completed=s["step"],
               info=f"loss {s['loss']:.3f} {s['img_per_s']:.0f} img/s")


def next_run_folder(base: Path = Path("runs/train")) -> Path:
    """``base``, or ``base2``, ``base3``, ... : the first that does not exist or is empty (runs never overwrite)."""
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{base.name}{n}")
    return candidate


def _train(args: argparse.Namespace, run: Callable) -> int:
    if args.out is None:
        args.out = next_run_folder()
    with training_progress(disable=args.json) as bar:
        if not args.json:
            bar.console.print(f"training {args.model} for {args.epochs} epoch(s) on {args.device} into {args.out}")
        task = bar.add_task("starting", total=None, info="")
        model, metrics = run(lambda s: report_step(bar, task, s, args.epochs))
    if args.export_to:
        _export_trained(args, model, metrics)
    report = {"model": args.model, **metrics, "checkpoint": str(args.out / "last.pt"),
              "entry": str(args.export_to) if args.export_to else None}
    print_json(report) if args.json else print_table(f"trained {args.model}", ["metric", "value"], list(report.items()))
    return 0


def _export_trained(args: argparse.Namespace, model: Any, metrics: dict) -> None:
    from eca_serve.export import ExportOptions, export_model

    name, version = _entry_name(args.export_to)
    provenance = {"command": "eca-serve " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "train", "seed": args.seed,
                  "train_seconds": metrics.get("train_seconds"), "device": args.device}
    export_model(model, args.export_to, ExportOptions(name=name, version=version, metrics=metrics, provenance=provenance))


def cmd_data_shapes(args: argparse.Namespace) -> int:
    from eca_serve.data import generate

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"shapes {args.kind}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                  TimeRemainingColumn(compact=True, elapsed_when_finished=True), console=_stderr_console()) as bar:
        task = bar.add_task("images", total=args.count)
        written = generate(args.out, kind=args.kind, count=args.count, seed=args.seed, size=args.size,
                           on_image=lambda n: bar.update(task, completed=n))
    print(json.dumps({"written": written, "out": str(args.out), "kind": args.kind, "seed": args.seed}))
    return 0
