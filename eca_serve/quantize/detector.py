"""INT8 of a Mask R-CNN / Faster R-CNN entry: backbone and FPN in INT8, everything after them in float.

ONNX Runtime quantizes convolutions, residual adds, ReLU and max-pooling well; the region proposal
network, RoIAlign, the box and mask heads and the post-processing (TopK, NMS, gathers, ``If``/``Loop``)
stay float32 and are never calibrated. The accuracy bound is on COCO AP (pycocotools) of the FP32
and INT8 graphs on the same held-out scenes, preprocessed and mapped back to original pixels as
the server does.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from eca_serve.errors import ConfigError
from eca_serve.quantize.graph import METHODS, Method, attention_nodes
from eca_serve.quantize.images import image_files
from eca_serve.repository import EntryConfig

Scope = Literal["backbone_fpn", "backbone", "fpn_adds_float", "ends_float", "with_rpn_head"]
SCOPES: tuple[str, ...] = ("backbone_fpn", "backbone", "fpn_adds_float", "ends_float", "with_rpn_head")
_QUANTIZABLE = frozenset({"Conv", "Add", "Relu", "MaxPool"})
_FEATURE_CONSUMERS = frozenset({"RoiAlign"})


@dataclass(frozen=True)
class DetectorSetting:
    """One way to quantize a detector.

    Attributes:
        method: Activation range calibration (``minmax``, ``entropy``, ``percentile``).
        per_channel: int8 weights per output channel (else per tensor).
        scope: Which nodes become INT8. ``backbone_fpn``: every Conv/Add/Relu/MaxPool that feeds
            the FPN outputs (the attention gates excepted); ``backbone``: the FPN stays float;
            ``fpn_adds_float``: the FPN's top-down adds stay float; ``ends_float``: the stem
            convolution and the FPN's output (3x3 ``layer_blocks``) convolutions stay float;
            ``with_rpn_head``: ``backbone_fpn`` plus the RPN head's shared convolutions.
        calibration_images: Number of calibration scenes used (the first N of the folder).
    """

    method: Method = "minmax"
    per_channel: bool = True
    scope: Scope = "backbone_fpn"
    calibration_images: int = 32

    def label(self) -> str:
        return (f"{self.method}, {'per-channel' if self.per_channel else 'per-tensor'} weights, "
                f"{self.scope}, {self.calibration_images} calibration scenes")


@dataclass
class DetectorReport:
    """FP32 against INT8 COCO AP (AP@[.5:.95], 0-1 scale) on the same held-out scenes."""

    parent_version: int
    setting: dict[str, Any]
    calibration_source: str
    eval_source: str
    eval_images: int
    quantized_nodes: int
    fp32: dict[str, float]
    int8: dict[str, float]
    max_ap_drop_points: float
    ap_drop_points: dict[str, float] = field(default_factory=dict)
    accepted: bool = False
    onnxruntime: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def detector_nodes(model: Any, scope: Scope, attention_outputs: Sequence[str]) -> list[str]:
    """Names of the nodes to quantize: Conv/Add/Relu/MaxPool between the input and the FPN outputs.

    The FPN outputs are the feature maps RoIAlign reads (plus the extra max-pooled level, which
    only the RPN reads); walking back from them along every input finds the backbone and FPN,
    whose quantizable nodes are kept, less the attention gates (pool -> Conv1d -> sigmoid -> Mul).

    Args:
        model: ``onnx.ModelProto`` of the detector (after ``quant_pre_process``).
        scope: See `DetectorSetting.scope`.
        attention_outputs: ``attention/<layer>`` graph outputs whose gates stay float.
    """
    if scope not in SCOPES:
        raise ConfigError(f"unknown detector scope {scope!r}; choose one of {list(SCOPES)}")
    producer = {out: node for node in model.graph.node for out in node.output}
    features = {n.input[0] for n in model.graph.node if n.op_type in _FEATURE_CONSUMERS}
    rpn_convs = _rpn_head_convs(model, features)
    backbone = _ancestors(producer, set(fpn_outputs(model)))
    gates = set(attention_nodes(model, attention_outputs))
    chosen = [n for n in model.graph.node if n.name in backbone and n.op_type in _QUANTIZABLE and n.name not in gates]
    fpn = {n.name for n in chosen if "fpn" in n.name}
    if scope == "backbone":
        chosen = [n for n in chosen if n.name not in fpn]
    elif scope == "fpn_adds_float":
        chosen = [n for n in chosen if not (n.name in fpn and n.op_type == "Add")]
    elif scope == "ends_float":
        first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
        outputs = {producer[f].name for f in features if f in producer}
        chosen = [n for n in chosen if n.name != first_conv and n.name not in outputs]
    names = [n.name for n in chosen]
    return names + (rpn_convs if scope == "with_rpn_head" else [])


def fpn_outputs(model: Any) -> list[str]:
    """The feature maps [1, C, H/s, W/s] the heads read: RoIAlign inputs, plus the RPN's max-pooled level."""
    features = {n.input[0] for n in model.graph.node if n.op_type in _FEATURE_CONSUMERS}
    if not features:
        raise ConfigError("no RoIAlign in the graph: not a two-stage detector")
    pooled = {n.output[0] for n in model.graph.node if n.op_type == "MaxPool" and n.input[0] in features}
    return sorted(features | pooled)


def _ancestors(producer: dict[str, Any], roots: set[str]) -> set[str]:
    seen: set[str] = set()
    stack = [producer[t] for t in roots if t in producer]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        stack += [producer[t] for t in node.input if t in producer]
    return seen


def _rpn_head_convs(model: Any, features: set[str]) -> list[str]:
    """The 3x3 convolutions (and their ReLU) the RPN head runs on each FPN level."""
    users: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    levels = set(features) | {n.output[0] for n in model.graph.node if n.op_type == "MaxPool" and n.input[0] in features}
    found = []
    for tensor in levels:
        for conv in (u for u in users.get(tensor, []) if u.op_type == "Conv"):
            found.append(conv.name)
            found += [r.name for r in users.get(conv.output[0], []) if r.op_type == "Relu"]
    return found


class _Scenes:
    """`CalibrationDataReader` giving one scene [3, H, W] at a time (the detector takes one image)."""

    def __init__(self, input_name: str, scenes: list[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter([{input_name: s} for s in scenes])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_detector_graph(source: Path, target: Path, scenes: list[np.ndarray], setting: DetectorSetting,
                            attention_outputs: Sequence[str]) -> int:
    """Write the INT8 (QDQ) detector to ``target``; returns the number of quantized nodes.

    Args:
        source: FP32 detector ONNX graph (input float32 [3, H, W]).
        target: Where the INT8 graph goes.
        scenes: Calibration scenes, each float32 [3, H, W] as the server feeds them.
        setting: Method, weight granularity and scope.
        attention_outputs: Attention outputs whose gates stay float.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if setting.method not in METHODS:
        raise ConfigError(f"unknown calibration method {setting.method!r}; choose one of {list(METHODS)}")
    prepared = target.with_name(target.stem + ".prep.onnx")
    cache = target.with_name(target.stem + ".ranges.json")
    # Symbolic shape inference does not get through torchvision's Loop/If post-processing.
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    try:
        model = onnx.load(str(prepared))
        nodes = detector_nodes(model, setting.scope, attention_outputs)
        calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                     "percentile": CalibrationMethod.Percentile}[setting.method]
        reader = _Scenes(model.graph.input[0].name, scenes)
        if setting.method != "minmax":
            _histogram_ranges(prepared, model, setting.method, reader, cache)
        quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ,
                        per_channel=setting.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=calibrate,
                        op_types_to_quantize=sorted(_QUANTIZABLE), nodes_to_quantize=nodes,
                        calibration_cache_path=str(cache) if setting.method != "minmax" else None)
    finally:
        for scratch in (prepared, cache, cache.with_suffix(".aug.onnx"), cache.with_suffix(".sub.onnx")):
            scratch.unlink(missing_ok=True)
        for scratch in Path(target.parent).glob("augmented_model*.onnx"):
            scratch.unlink(missing_ok=True)
    return len(nodes)


def _histogram_ranges(prepared: Path, model: Any, method: Method, reader: _Scenes, cache: Path) -> None:
    """Entropy or percentile ranges of the backbone + FPN tensors, written to ``cache``.

    Histogram calibrators stack each tensor over the calibration scenes, so they see only the
    backbone + FPN subgraph (fixed shapes for a fixed scene size): the heads' tensors have one row
    per proposal or detection, a different count in every scene. Entropy uses 2048 bins for 128
    levels (ORT's 128 for 128 equals minmax, see graph.py), percentile ORT's 2048 bins at 99.999.
    """
    import onnx.utils
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    sub = cache.with_suffix(".sub.onnx")
    onnx.utils.extract_model(str(prepared), str(sub), [model.graph.input[0].name], fpn_outputs(model))
    options = {"num_bins": 2048, "num_quantized_bins": 128} if method == "entropy" else {"num_bins": 2048, "percentile": 99.999}
    calibrator = create_calibrator(sub, sorted(_QUANTIZABLE), augmented_model_path=str(cache.with_suffix(".aug.onnx")),
                                   calibrate_method=CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.Percentile,
                                   extra_options=options)
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)


def load_scenes(files: Sequence[Path], config: EntryConfig) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Each file through the server's decode and `detector_input`: (float32 [3, H, W], original (w, h))."""
    from eca_serve.pipelines.detection import detector_input
    from eca_serve.pipelines.images import DecodeLimits, decode_image

    if config.detection is None:
        raise ConfigError(f"{config.name}:{config.version} has no detection block")
    side = config.detection.min_size
    scenes = []
    for file in files:
        decoded = decode_image(Path(file).read_bytes(), limits=DecodeLimits(), target=(side, side))
        scenes.append((detector_input(decoded.image, config.input, config.detection), decoded.original_size))
    return scenes


@dataclass(frozen=True)
class CocoSet:
    """A COCO-format folder: ``annotations.json`` and ``images/`` (as ``eca-serve data shapes --kind detect``)."""

    root: Path

    @property
    def annotations(self) -> Path:
        return self.root / "annotations.json"

    def files(self, limit: int | None = None) -> tuple[list[int], list[Path]]:
        """(image ids, image paths) in id order, the first ``limit`` of them."""
        if not self.annotations.is_file():
            raise ConfigError(f"{self.root} has no annotations.json (COCO format expected)")
        images = sorted(json.loads(self.annotations.read_text())["images"], key=lambda i: i["id"])[:limit]
        return [i["id"] for i in images], [self.root / "images" / i["file_name"] for i in images]


def calibration_files(root: Path, count: int) -> list[Path]:
    """The first ``count`` images of a COCO folder (``images/``) or of any image folder."""
    folder = root / "images" if (root / "images").is_dir() else root
    return image_files(folder)[:count]


def coco_ap(session: Any, data: CocoSet, scenes: list[tuple[np.ndarray, tuple[int, int]]], ids: list[int],
            categories: list[str]) -> dict[str, float]:
    """Box (and mask) AP, AP50 of ``session`` on ``scenes`` scored against ``data`` with pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(data.annotations))
    by_name = {c["name"]: c["id"] for c in truth.loadCats(truth.getCatIds())}
    names = [o.name for o in session.get_outputs()]
    results: list[dict[str, Any]] = []
    for image_id, (tensor, size) in zip(ids, scenes):
        outputs = dict(zip(names, session.run(names, {session.get_inputs()[0].name: tensor})))
        results += _coco_results(outputs, image_id, tensor.shape, size, categories, by_name)
    metrics: dict[str, float] = {}
    for kind, prefix in (("bbox", "box"), ("segm", "mask")):
        if kind == "segm" and "masks" not in names:
            continue
        if not results:
            metrics.update({f"{prefix}_AP": 0.0, f"{prefix}_AP50": 0.0})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(truth, truth.loadRes(results), kind)
            evaluator.params.imgIds = ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics.update({f"{prefix}_AP": round(float(evaluator.stats[0]), 4),
                        f"{prefix}_AP50": round(float(evaluator.stats[1]), 4)})
    return metrics


def _coco_results(outputs: dict[str, np.ndarray], image_id: int, input_shape: tuple[int, ...], size: tuple[int, int],
                  categories: list[str], by_name: dict[str, int]) -> list[dict[str, Any]]:
    """One scene's detections in original pixels: COCO xywh boxes and RLE masks (> 0.5), as served."""
    from eca_serve.pipelines.detection import to_original_pixels
    from eca_serve.pipelines.masks import encode_rle, to_original_size

    boxes = to_original_pixels(outputs["boxes"], input_shape, size)
    found = []
    for i, (box, label, score) in enumerate(zip(boxes, outputs["labels"], outputs["scores"])):
        entry: dict[str, Any] = {"image_id": image_id, "category_id": by_name[categories[int(label)]], "score": float(score),
                                 "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]}
        if "masks" in outputs:
            entry["segmentation"] = encode_rle(to_original_size(outputs["masks"][i, 0], size) > 0.5)
        found.append(entry)
    return found


def compare_detectors(fp32: dict[str, float], int8: dict[str, float], max_drop_points: float) -> tuple[dict[str, float], bool]:
    """AP drops in points (100 x the 0-1 AP) of every ``*_AP`` and whether all are within the bound."""
    drops = {k: round(100 * (fp32[k] - int8[k]), 2) for k in fp32 if k.endswith("_AP")}
    return drops, all(d <= max_drop_points for d in drops.values())
