"""``eca-serve quantize``: an FP32 repository entry -> a new INT8 version with its accuracy report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eca_serve.errors import ConfigError, with_article
from eca_serve.quantize.graph import Method, cpu_session, quantize_graph, run_graph
from eca_serve.quantize.images import image_files, labels_of, load_inputs
from eca_serve.quantize.report import Comparison, compare
from eca_serve.repository import (
    CONFIG_FILE, EngineAccuracy, EntryConfig, QuantizationSpec, artifact_spec, list_entries, read_config, write_config,
)

INT8_FILE = "model.onnx"
REPORT_FILE = "quantization.json"
CLASSIFICATION = frozenset({"classification"})


@dataclass(frozen=True)
class QuantizeOptions:
    """What to quantize with and the accuracy bound.

    Attributes:
        calibration: Folder of calibration images (any layout).
        eval: ImageFolder of held-out images (class folders named as the categories, optionally
            with an index prefix such as ``05_star``); None measures on the calibration images.
        method: Activation range calibration: ``minmax``, ``entropy`` or ``percentile``.
        out_version: Version to write; None = newest version of the model + 1.
        max_drop: Largest accepted top-1 drop, in percentage points.
        attention_in_float: Keep the nodes that compute the attention weights (ECA's Conv1d, SE's 1x1 convs, the
            sigmoid) in float32; the gate's pool and its scaling Mul run int8 either way.
        command: The command line, recorded in the provenance.
    """

    calibration: Path
    eval: Path | None = None
    method: Method = "minmax"
    out_version: int | None = None
    max_drop: float = 0.5
    attention_in_float: bool = True
    command: str | None = None


@dataclass(frozen=True)
class QuantizeResult:
    """The folder written and its report; ``config.json`` exists there only when accepted."""

    folder: Path
    report: QuantizationSpec

    @property
    def accepted(self) -> bool:
        return self.report.accepted


def quantize_entry(repository: Path, name: str, version: int | None, options: QuantizeOptions) -> QuantizeResult:
    """Quantize ``name:version`` (None = newest FP32 version) into a new version of the same model.

    The INT8 graph and ``quantization.json`` are written first; ``config.json`` (artifact ``onnx``
    only, ``precision: "int8"``, the report under ``quantization`` and ``metrics["quantization"]``)
    is written last and only when the top-1 drop is within ``options.max_drop``, on ONNX Runtime and,
    where openvino is installed, on OpenVINO too: the one INT8 file is served by either engine, which
    round it differently. Otherwise the INT8 graph is removed and only the report stays.

    Raises:
        ConfigError: unknown entry, not an FP32 ONNX classifier, target version taken, bad images.
    """
    parent_folder, parent = fp32_parent(repository, name, version)
    folder = target_folder(repository, name, options.out_version)
    calibration_files = image_files(options.calibration)
    calibration = load_inputs(calibration_files, parent)
    folder.mkdir(parents=True, exist_ok=True)
    attention_outputs = [a.output for a in parent.attention]
    excluded = quantize_graph(parent_folder / parent.artifacts["onnx"].file, folder / INT8_FILE, calibration,
                              method=options.method, attention_outputs=attention_outputs,
                              attention_in_float=options.attention_in_float)
    eval_root = options.eval or options.calibration
    eval_files = image_files(eval_root) if options.eval else calibration_files
    labels = labels_of(eval_files, eval_root, parent.categories)
    inputs = load_inputs(eval_files, parent) if options.eval else calibration
    fp32 = run_graph(cpu_session(parent_folder / parent.artifacts["onnx"].file), inputs)
    int8 = run_graph(cpu_session(folder / INT8_FILE), inputs)
    measured = compare(fp32, int8, labels, attention_outputs)
    on_openvino = openvino_accuracy(folder / INT8_FILE, inputs, fp32, labels, attention_outputs)
    report = _report(parent, options, measured, excluded, len(calibration_files), eval_root, on_openvino)
    (folder / REPORT_FILE).write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    if not report.accepted:
        (folder / INT8_FILE).unlink(missing_ok=True)
        return QuantizeResult(folder, report)
    write_config(folder, _int8_config(parent, folder, report, options))
    return QuantizeResult(folder, report)


def fp32_parent(repository: Path, name: str, version: int | None,
                tasks: frozenset[str] = CLASSIFICATION) -> tuple[Path, EntryConfig]:
    """(folder, config) of the FP32 ONNX entry ``name:version`` (None = newest FP32 version) of one of ``tasks``.

    Raises:
        ConfigError: unknown model or version, no FP32 version, an INT8 entry, another task, no ONNX artifact.
    """
    versions = {v: f for n, v, f in list_entries(repository) if n == name}
    if not versions:
        raise ConfigError(f"no model {name!r} in {repository}")
    if version is None:
        fp32 = [v for v in sorted(versions) if read_config(versions[v], verify=False).precision == "fp32"]
        if not fp32:
            raise ConfigError(f"{name} has no FP32 version to quantize")
        version = fp32[-1]
    if version not in versions:
        raise ConfigError(f"no version {version} of {name} in {repository} (have {sorted(versions)})")
    config = read_config(versions[version])
    if config.precision != "fp32":
        raise ConfigError(f"{name}:{version} is {config.precision} already; quantize its FP32 parent")
    if config.task not in tasks:
        raise ConfigError(f"{name}:{version} is {with_article(config.task)} model; "
                          f"this quantizes {' and '.join(sorted(tasks))} models")
    if "onnx" not in config.artifacts:
        raise ConfigError(f"{name}:{version} has no ONNX artifact to quantize")
    return versions[version], config


def target_folder(repository: Path, name: str, out_version: int | None) -> Path:
    taken = [v for n, v, _ in list_entries(repository) if n == name]
    version = out_version if out_version is not None else max(taken) + 1
    if version < 1:
        raise ConfigError(f"--out-version must be >= 1, got {version}")
    folder = Path(repository) / name / str(version)
    if (folder / CONFIG_FILE).exists():
        raise ConfigError(f"{folder} holds an entry already; choose another --out-version")
    return folder


def openvino_accuracy(int8_file: Path, inputs: np.ndarray, fp32: dict[str, np.ndarray], labels: np.ndarray | None,
                      attention_outputs: list[str]) -> EngineAccuracy | None:
    """The INT8 graph compiled by OpenVINO (as its backend serves it) against ``fp32``'s outputs on ``inputs``
    [N, 3, H, W]; None where openvino is not installed."""
    from eca_serve.runtime.engines import openvino_installed

    if not openvino_installed():
        return None
    import openvino

    from eca_serve.runtime.base import BackendOptions
    from eca_serve.runtime.openvino_backend import create_openvino_session

    session = create_openvino_session(int8_file, BackendOptions("openvino", "cpu", precision="int8"), "quantize")
    c = compare(fp32, run_graph(session, inputs), labels, attention_outputs)
    return EngineAccuracy(engine="openvino", version=openvino.__version__, top1_int8=c.top1_int8, top1_drop=c.drop,
                          agreement=c.agreement, max_abs_prob_diff=c.max_abs_prob_diff,
                          max_abs_attention_diff=c.max_abs_attention_diff, mean_abs_attention_diff=c.mean_abs_attention_diff,
                          attention_diff_per_layer=c.attention_per_layer)


def _report(parent: EntryConfig, options: QuantizeOptions, measured: Comparison, excluded: list[str],
            calibration_images: int, eval_root: Path, on_openvino: EngineAccuracy | None) -> QuantizationSpec:
    import onnxruntime

    return QuantizationSpec(
        parent_version=parent.version, method=options.method, calibration_images=calibration_images,
        calibration_source=str(options.calibration), excluded_nodes=excluded,
        attention_in_float=options.attention_in_float, eval_images=measured.images, eval_source=str(eval_root),
        top1_fp32=measured.top1_fp32, top1_int8=measured.top1_int8, top1_drop=measured.drop,
        max_drop=options.max_drop, agreement=measured.agreement, max_abs_prob_diff=measured.max_abs_prob_diff,
        max_abs_attention_diff=measured.max_abs_attention_diff,
        mean_abs_attention_diff=measured.mean_abs_attention_diff,
        attention_diff_per_layer=measured.attention_per_layer,
        accepted=max(measured.drop, on_openvino.top1_drop if on_openvino else measured.drop) <= options.max_drop,
        onnxruntime=onnxruntime.__version__, openvino=on_openvino,
    )


def _int8_config(parent: EntryConfig, folder: Path, report: QuantizationSpec, options: QuantizeOptions) -> EntryConfig:
    metrics = {"images": report.eval_images, "quantization": report.model_dump(mode="json")}
    if report.top1_int8 is not None:
        metrics = {"top1": report.top1_int8, **metrics}
    return int8_config(parent, folder, metrics, options.command, report.onnxruntime,
                       quantization=report.model_dump(mode="json"))


def int8_config(parent: EntryConfig, folder: Path, metrics: dict, command: str | None, onnxruntime: str,
                quantization: dict | None = None) -> EntryConfig:
    """config.json of the INT8 version in ``folder`` of ``parent``: its ONNX graph only, ``metrics``, provenance."""
    from eca_serve import __version__

    data = parent.model_dump(mode="json")
    data.update(
        version=int(folder.name), precision="int8", quantization=quantization,
        artifacts={"onnx": artifact_spec(folder / INT8_FILE, "onnx").model_dump(mode="json")},
        parity=None, metrics=metrics,
        # INT8 gains more from batching than FP32 and its attention differs slightly: its serving block
        # (eca-serve profile --recommend) and drift reference (eca-serve calibrate-drift) are its own.
        serving=None, drift=None,
        provenance={"command": command or "quantize", "parent": f"{parent.name}:{parent.version}",
                    "onnxruntime": onnxruntime, "eca_serve": __version__},
    )
    return EntryConfig.model_validate(data)
