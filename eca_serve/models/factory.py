"""`create_model`: build a registered model, optionally from a checkpoint, strictly."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import nn

from eca_serve.errors import CheckpointError, ConfigError
from eca_serve.models._config import PreprocessConfig
from eca_serve.models._registry import ModelEntry, get_entry
from eca_serve.models.checkpoint import Checkpoint, eca_kernel_sizes, load_state_dict_strict, read_checkpoint
from eca_serve.models.surgery import with_fresh_gates
from eca_serve.models.zoo import k_size_from_checkpoint


def create_model(
    name: str,
    *,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    categories: Sequence[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model in eval mode, loading ``weights`` strictly if given.

    Values that come with the weights win over defaults, and a conflicting explicit argument raises:
    ``num_classes`` is read from the classification layer and ECA kernel sizes from the
    ``[1, 1, k]`` ECA tensors (unless ``k_size`` is passed, which must then match).

    Args:
        name: Registry name (see `list_models`).
        weights: Checkpoint path: authors' ``.pth.tar``, plain state dict, or ``.safetensors``.
        num_classes: Number of classes; default 1000 for classifiers, or what the weights hold.
        categories: Class names (one per class); default from the weights' config, ImageNet names
            for 1,000 classes, else ``class_i``.
        **kwargs: Architecture options of the builder (e.g. ``k_size``, ``widths``).

    Returns:
        The model with ``model.config`` (a frozen `ModelConfig`).

    Raises:
        UnknownModelError: unknown name. CheckpointError: weights that do not fit. ConfigError: bad options.
    """
    entry = get_entry(name)
    ckpt = read_checkpoint(weights) if weights is not None else None
    preprocess = None
    if ckpt is not None:
        num_classes = _num_classes_from(entry, ckpt, num_classes)
        if entry.attention == "eca" and "k_size" not in kwargs:
            kernels = eca_kernel_sizes(ckpt.state_dict)
            if kernels:
                kwargs["k_size"] = k_size_from_checkpoint(name, kernels)
        stored = ckpt.config or {}
        categories = categories if categories is not None else stored.get("categories")
        kwargs = {**_stored_build_args(stored, name), **kwargs}
        preprocess = _stored_preprocess(stored, name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = entry.builder(**kwargs)
    if ckpt is not None:
        # a checkpoint of the network before surgery gets the new attention modules' initial tensors
        load_state_dict_strict(model, with_fresh_gates(model, ckpt.state_dict), source=Path(weights).name)
    if preprocess is not None:
        model.config = model.config.replace(preprocess=preprocess)
    if categories is not None:
        model.config = model.config.replace(categories=_checked_categories(categories, model.config.num_classes))
    return model.eval()


def _stored_build_args(stored: dict[str, Any], name: str) -> dict[str, Any]:
    """Architecture arguments our own exports record in the weights' metadata (same model name only)."""
    if stored.get("name") != name:
        return {}
    return {k: v for k, v in (stored.get("extra") or {}).items() if k != "k_size"}


def _stored_preprocess(stored: dict[str, Any], name: str) -> PreprocessConfig | None:
    """The preprocessing our own exports record with the weights (input size, resize, crop, mean/std).

    A re-export of a shipped entry's weights then writes the entry's own 64 px preprocessing, not the
    architecture's 224/256 px default, so it classifies as the shipped entry does.
    """
    raw = stored.get("preprocess") if stored.get("name") == name else None
    if not isinstance(raw, dict):
        return None
    try:
        return PreprocessConfig.model_validate(raw)
    except ValueError as exc:
        raise CheckpointError(f"the weights' stored preprocessing is not valid: {exc}") from exc


def _num_classes_from(entry: ModelEntry, ckpt: Checkpoint, requested: int | None) -> int | None:
    head = ckpt.state_dict.get(f"{entry.head}.weight")
    if head is None:
        raise CheckpointError(f"checkpoint has no '{entry.head}.weight'; is it a {entry.name} checkpoint?")
    # NOTE: a head with several rows per class (RetinaNet: one per anchor) comes with its own reader.
    reader = getattr(entry.builder, "num_classes_from_state", None)
    found = int(reader(ckpt.state_dict)) if reader is not None else int(head.shape[0])
    if requested is not None and requested != found:
        raise ConfigError(f"num_classes={requested} conflicts with the checkpoint's {found} classes")
    return found


def _checked_categories(categories: Sequence[str], num_classes: int) -> tuple[str, ...]:
    names = tuple(str(c) for c in categories)
    if len(names) != num_classes:
        raise ConfigError(f"got {len(names)} category names for {num_classes} classes")
    return names
