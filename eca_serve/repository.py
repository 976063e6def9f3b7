"""The model repository: ``<root>/<name>/<version>/`` folders with artifacts and one ``config.json``.

``config.json`` is the single source of truth the server reads: task, architecture, input
preprocessing, outputs, categories, attention layers, and the sha256 of every artifact.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from eca_serve.errors import ConfigError
from eca_serve.kinds import Device, DeviceKind, Engine, Precision, device_kind
from eca_serve.preprocessing import Preprocessing
from eca_serve.quantization_spec import EngineAccuracy, QuantizationSpec  # noqa: F401  (part of config.json)

CONFIG_FILE = "config.json"
SCHEMA_VERSION = 1
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# The batching rules, one name each in config.json's ``serving`` block, the ECA_SERVE_* settings and `BatchPolicy`.
BATCHING_FIELDS = ("max_batch_size", "instances", "max_queue_delay_ms", "max_queue_size", "timeout_s", "max_inflight")
ANY_SIZE_WARMUP = (320, 320)  # (H, W) of the warm-up image of an entry that takes any size and names none


def check_safe_name(value: str, what: str = "name") -> str:
    """``value`` if it is a plain file/folder name (no separators, no ``..``), else `ConfigError`."""
    if not _SAFE_NAME.match(value) or ".." in value:
        raise ConfigError(f"invalid {what} {value!r}: use letters, digits, '_', '-', '.' (no paths)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(Preprocessing):
    """How clients' images become the model input: the model's `Preprocessing` record plus the tensor's form.

    Classifiers take ``[N, 3, H, W]`` normalised float32 (``layout="NCHW"``); detectors take one
    ``[3, H, W]`` RGB image in [0, 1] (``layout="CHW"``) and normalise inside the model. The server
    resizes a detector's image with Pillow to the working size (`model_input_size` of the entry's
    ``detection`` sizes) before the model, whose own resize is then the identity.
    """

    name: str = "input"
    layout: Literal["NCHW", "CHW"]
    dtype: Literal["float32"] = "float32"
    color: Literal["RGB"] = "RGB"
    normalized_in_model: bool = False
    preprocessing: Literal["fast", "reference"] | None = Field(
        None, description="classifier preprocessing for this entry; None = the server's ECA_SERVE_PREPROCESSING")


class OutputSpec(_Strict):
    """One output tensor; -1 marks a variable dimension."""

    name: str
    shape: list[int]
    dtype: str


def attention_output(layer: str) -> str:
    """Name of the output carrying a layer's attention weights, e.g. ``attention/layer1.0.eca``.

    The same name keys the ONNX graph output, the TorchScript/eager backends' outputs and ``AttentionSpec.output``.
    """
    return f"attention/{layer}"


EMBEDDING_OUTPUT = "embedding"


class EmbeddingSpec(_Strict):
    """A classifier's pooled features [N, dim]: the input of its final layer, not normalised.

    The same name keys the ONNX graph output and the TorchScript/eager backends' outputs.
    """

    output: str = EMBEDDING_OUTPUT
    dim: int = Field(ge=1)


class AttentionSpec(_Strict):
    """One channel-attention layer and the output that carries its weights [N, *item_shape].

    ``kind`` names the family: ``eca`` and ``se`` weights are [N, C]; ``resnest`` split weights are
    [N, radix, C] (r-softmax over radix); ``dgc`` layers come in pairs, ``<conv>.saliency`` and
    ``<conv>.keep`` (1 = kept input channel), each [N, heads, C_in]. ``shape`` is the per-image shape
    when it is not [channels]; responses that flatten a layer per image do so in row-major order.
    """

    name: str
    kind: Literal["eca", "se", "resnest", "dgc"]
    channels: int
    k_size: int | None
    output: str
    shape: list[int] | None = None

    def item_shape(self) -> list[int]:
        """Shape of one image's weights: ``shape``, or [channels]."""
        return list(self.shape) if self.shape else [self.channels]


class ArtifactSpec(_Strict):
    """A file of the entry and its checksum."""

    file: str
    format: Literal["onnx", "torchscript", "safetensors"]
    sha256: str
    bytes: int

    @field_validator("file")
    @classmethod
    def _plain_file(cls, value: str) -> str:
        return check_safe_name(value, "artifact file")


class DriftSpec(_Strict):
    """The entry's attention drift reference (`eca_serve.pipelines.drift`), written by ``eca-serve calibrate-drift``."""

    file: str
    sha256: str
    images: int = Field(ge=1, description="held-out images the reference summarises")
    source: str = Field("", description="where those images came from")

    @field_validator("file")
    @classmethod
    def _plain_file(cls, value: str) -> str:
        return check_safe_name(value, "drift reference file")


class ServingSpec(_Strict):
    """How the server batches this model: Triton's per-model ``dynamic_batching`` and ``instance_group``.

    Every field is optional; the policy of an entry is decided field by field, first match wins:
    this block (when it applies to the serving device) > the server's ``ECA_SERVE_*`` settings,
    which are defaults for entries that omit a field > the device default of ``BatchPolicy.for_device``.
    ``eca-serve profile NAME --recommend --write`` measures the model and writes this block.

    Attributes:
        device: Device kind the values were chosen for (``"cpu"`` or ``"cuda"``, which also covers
            ``"cuda:N"``); served on another kind the block is ignored. None: every device.
        max_batch_size: Most images per model run (>= 1).
        instances: Batches of this model running at the same time (>= 1).
        max_queue_delay_ms: Longest wait for a fuller batch (>= 0).
        max_queue_size: Most queued requests before 503 (>= max_batch_size).
        timeout_s: Queue + inference limit per request (> 0); unset keeps the server's.
        engine: ``onnxruntime``, ``openvino`` or ``auto`` (unset: the rule of
            `eca_serve.runtime.engines.default_engine`); the server's ``--backend`` overrides it.
        precision: ``fp32``, ``bf16`` (OpenVINO on CPUs with AMX or AVX512_BF16, else FP32 with a
            warning) or ``int8`` (this entry is a QDQ INT8 one, served as it is).
        max_inflight: Requests of this model held at once before 503 (>= 1); unset:
            max_queue_size + max_batch_size x instances.
    """

    device: Annotated[DeviceKind | None, BeforeValidator(lambda v: v if v is None else device_kind(v))] = None
    max_batch_size: int | None = Field(None, ge=1)
    instances: int | None = Field(None, ge=1)
    max_queue_delay_ms: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_queue_size: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    engine: Literal[Engine, "auto"] | None = None
    precision: Precision | None = None

    max_inflight: int | None = Field(None, ge=1)

    def applies_to(self, device: Device | str) -> bool:
        """True when this block was chosen for ``device``'s kind (or for every device)."""
        return self.device is None or Device(device).kind == self.device

    def fields_for(self, device: Device | str) -> dict[str, Any]:
        """The batching fields set in this block, as ``BatchPolicy`` keywords, if it applies to ``device``, else {}."""
        if not self.applies_to(device):
            return {}
        return self.model_dump(include=set(BATCHING_FIELDS), exclude_none=True)


class DetectionSpec(_Strict):
    """A detector's sizes and thresholds (torchvision's ``GeneralizedRCNNTransform`` and box-head options).

    The server resizes each image so that the model's own resize is the identity (`input_size`).
    """

    min_size: int = Field(ge=1, description="shorter side of the working size")
    max_size: int = Field(ge=1, description="longest side allowed")
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = Field(100, ge=1)
    warmup_size: tuple[int, int] | None = Field(None, description="(H, W) of the warm-up image; None = min_size square")

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) a ``width`` x ``height`` image is resized to before the model (see `model_input_size`)."""
        return model_input_size(width, height, self.min_size, self.max_size)


class _Latest(_Strict):
    num_versions: int = Field(ge=1)


class _Specific(_Strict):
    versions: list[int] = Field(min_length=1)


class _All(_Strict):
    pass


class VersionPolicy(_Strict):
    """Which versions of a model are served, in Triton's shape: exactly one of ``latest``, ``all``, ``specific``.

    ``{"latest": {"num_versions": N}}``: the N highest versions; ``{"all": {}}``: every version (the default
    when no config sets a policy); ``{"specific": {"versions": [1, 3]}}``: those versions that exist.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    latest: _Latest | None = None
    all_versions: _All | None = Field(None, alias="all")
    specific: _Specific | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        if sum(p is not None for p in (self.latest, self.all_versions, self.specific)) != 1:
            raise ValueError('version_policy takes exactly one of "latest", "all", "specific"')
        return self

    def select(self, versions: list[int]) -> set[int]:
        """The versions of ``versions`` this policy serves."""
        if self.latest is not None:
            return set(sorted(versions)[-self.latest.num_versions:])
        if self.specific is not None:
            return set(versions) & set(self.specific.versions)
        return set(versions)


class EntryConfig(_Strict):
    """``config.json`` of one model version."""

    schema_version: int = SCHEMA_VERSION
    name: str
    version: int = Field(ge=1)
    task: str = Field(description="a registered task (eca_serve.pipelines.tasks), checked when the entry is served")
    architecture: str
    build_kwargs: dict[str, Any] = {}
    num_classes: int
    categories: list[str]
    input: InputSpec
    outputs: list[OutputSpec]
    attention: list[AttentionSpec]
    # classifiers exported with their pooled features as an extra output; None: entries made before that, detectors
    embedding: EmbeddingSpec | None = None
    artifacts: dict[str, ArtifactSpec]
    detection: DetectionSpec | None = None
    parity: dict[str, Any] | None = None
    metrics: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
    serving: ServingSpec | None = None
    drift: DriftSpec | None = None
    # INT8 entries (eca-serve quantize): only an ``onnx`` artifact, served by ONNX Runtime on CPU.
    precision: Literal["fp32", "int8"] = "fp32"
    quantization: QuantizationSpec | None = None
    # which versions of this model a server runs; the newest version's config.json decides (None: all)
    version_policy: VersionPolicy | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_safe_name(value, "model name")

    def warmup_size(self) -> tuple[int, int]:
        """(H, W) of the image that warms the model up: its fixed input size, else the detector's warm-up size."""
        if self.input.size is not None:
            return self.input.size
        if self.detection is not None:
            return self.detection.warmup_size or (self.detection.min_size, self.detection.min_size)
        return ANY_SIZE_WARMUP


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_spec(path: Path, fmt: str) -> ArtifactSpec:
    """Checksum record of an artifact file."""
    return ArtifactSpec(file=path.name, format=fmt, sha256=sha256_file(path), bytes=path.stat().st_size)


def write_config(folder: Path, config: EntryConfig) -> Path:
    """Write ``config.json`` into ``folder``."""
    path = folder / CONFIG_FILE
    data = config.model_dump(mode="json", by_alias=True)
    for optional in ("version_policy", "embedding"):  # unset: configs written before these existed stay byte-identical
        if data.get(optional) is None:
            data.pop(optional, None)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def read_config(folder: Path, *, verify: bool = True) -> EntryConfig:
    """Read and validate ``folder/config.json``; with ``verify`` also check every artifact's sha256.

    Raises:
        ConfigError: missing or invalid config, or an artifact missing or modified.
    """
    config = parse_config(folder)
    if verify:
        verify_artifacts(folder, config)
    return config


def parse_config(folder: Path) -> EntryConfig:
    """Read and validate ``folder/config.json`` without reading the artifacts.

    Raises:
        ConfigError: missing or invalid config.
    """
    path = folder / CONFIG_FILE
    try:
        return EntryConfig.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no {CONFIG_FILE} in {folder}") from None
    except ValueError as exc:
        raise ConfigError(f"invalid {path}: {exc}") from None


def verify_artifacts(folder: Path, config: EntryConfig) -> None:
    """Check that every artifact ``config`` names (and its drift reference) is in ``folder`` unmodified.

    Raises:
        ConfigError: an artifact missing or not matching its sha256.
    """
    for key, spec in config.artifacts.items():
        _verify_artifact(folder, key, spec)
    if config.drift is not None:
        _verify_artifact(folder, "drift", config.drift)


def _verify_artifact(folder: Path, key: str, spec: ArtifactSpec | DriftSpec) -> None:
    file = folder / spec.file
    if not file.is_file():
        raise ConfigError(f"{folder}: artifact {key} ({spec.file}) is missing")
    if sha256_file(file) != spec.sha256:
        raise ConfigError(f"{folder}: artifact {key} ({spec.file}) does not match its sha256 in {CONFIG_FILE}")


def list_entries(root: Path) -> list[tuple[str, int, Path]]:
    """(name, version, folder) of every ``<root>/<name>/<version>/config.json``, sorted."""
    found = []
    for config in sorted(Path(root).glob(f"*/*/{CONFIG_FILE}")):
        version_dir = config.parent
        if version_dir.name.isdigit() and _SAFE_NAME.match(version_dir.parent.name):
            found.append((version_dir.parent.name, int(version_dir.name), version_dir))
    return sorted(found, key=lambda e: (e[0], e[1]))


def model_input_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(W, H) for which torchvision's detection transform is the identity (its scale is exactly 1).

    The shorter side becomes ``min_size`` unless the longer side would exceed ``max_size``, in
    which case the longer side becomes ``max_size``, as torchvision's own resize rule does.
    """
    short, long = min(width, height), max(width, height)
    if long * min_size / short <= max_size:
        scale, exact = min_size / short, min_size
        new_short, new_long = exact, min(max_size, max(1, round(long * scale)))
    else:
        scale = max_size / long
        new_short, new_long = max(1, round(short * scale)), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)
