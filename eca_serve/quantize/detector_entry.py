"""``eca-serve quantize`` of a detector entry: a new INT8 version, written only within the AP bound."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from eca_serve.quantize.detector import (
    CocoSet, DetectorReport, DetectorSetting, calibration_files, coco_ap, compare_detectors,
    load_scenes, quantize_detector_graph,
)
from eca_serve.quantize.entry import INT8_FILE, REPORT_FILE, fp32_parent, int8_config, target_folder
from eca_serve.quantize.graph import cpu_session
from eca_serve.repository import list_entries, read_config, write_config

DETECTION_TASKS = frozenset({"detection", "instance_segmentation"})


@dataclass(frozen=True)
class DetectorQuantizeOptions:
    """What to quantize a detector with and the accuracy bound.

    Attributes:
        calibration: COCO folder (``images/``) or any image folder; its first ``setting.calibration_images``.
        eval: COCO folder (``annotations.json`` + ``images/``) of held-out scenes.
        setting: Method, weight granularity, scope, calibration count.
        eval_images: Score the first N eval scenes (None = all).
        max_ap_drop: Largest accepted drop of box AP and of mask AP, in points (AP x 100).
        out_version: Version to write; None = newest + 1.
        command: The command line, recorded in the provenance.
    """

    calibration: Path
    eval: Path
    setting: DetectorSetting = DetectorSetting()
    eval_images: int | None = None
    max_ap_drop: float = 1.0
    out_version: int | None = None
    command: str | None = None


@dataclass(frozen=True)
class DetectorQuantizeResult:
    """The folder written and its report; ``config.json`` exists there only when accepted."""

    folder: Path
    report: DetectorReport

    @property
    def accepted(self) -> bool:
        return self.report.accepted


def is_detector_entry(repository: Path, name: str, version: int | None) -> bool:
    """Whether ``name[:version]`` (None = newest) is a detection or instance-segmentation entry."""
    versions = {v: f for n, v, f in list_entries(repository) if n == name}
    if not versions:
        return False
    folder = versions.get(version if version is not None else max(versions))
    return folder is not None and read_config(folder, verify=False).task in DETECTION_TASKS


def quantize_detector_entry(repository: Path, name: str, version: int | None,
                            options: DetectorQuantizeOptions) -> DetectorQuantizeResult:
    """Quantize detector ``name:version`` (None = newest FP32) into a new version of the same model.

    The INT8 graph and ``quantization.json`` are written first; ``config.json`` (``precision:
    "int8"``, ONNX only, the report under ``metrics["quantization"]``) last and only when neither
    box AP nor mask AP drops by more than ``options.max_ap_drop`` points. Otherwise the graph is
    removed and only the report stays.

    Raises:
        ConfigError: unknown entry, not an FP32 ONNX detector, target version taken, bad data.
    """
    import onnxruntime

    parent_folder, parent = fp32_parent(repository, name, version, DETECTION_TASKS)
    folder = target_folder(repository, name, options.out_version)
    calibration = [s for s, _ in load_scenes(calibration_files(options.calibration, options.setting.calibration_images), parent)]
    data = CocoSet(options.eval)
    ids, files = data.files(options.eval_images)
    scenes = load_scenes(files, parent)
    folder.mkdir(parents=True, exist_ok=True)
    source = parent_folder / parent.artifacts["onnx"].file
    nodes = quantize_detector_graph(source, folder / INT8_FILE, calibration, options.setting,
                                    [a.output for a in parent.attention])
    fp32 = coco_ap(cpu_session(source), data, scenes, ids, parent.categories)
    int8 = coco_ap(cpu_session(folder / INT8_FILE), data, scenes, ids, parent.categories)
    drops, accepted = compare_detectors(fp32, int8, options.max_ap_drop)
    report = DetectorReport(parent_version=parent.version, setting=asdict(options.setting) | {"calibration_images": len(calibration)},
                            calibration_source=str(options.calibration), eval_source=str(options.eval),
                            eval_images=len(ids), quantized_nodes=nodes, fp32=fp32, int8=int8,
                            max_ap_drop_points=options.max_ap_drop, ap_drop_points=drops, accepted=accepted,
                            onnxruntime=onnxruntime.__version__)
    (folder / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if not accepted:
        (folder / INT8_FILE).unlink(missing_ok=True)
    else:
        metrics = {"images": report.eval_images, **report.int8, "quantization": report.to_json()}
        write_config(folder, int8_config(parent, folder, metrics, options.command, report.onnxruntime))
    return DetectorQuantizeResult(folder, report)
