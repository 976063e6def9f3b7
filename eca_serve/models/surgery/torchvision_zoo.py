"""Registry entries ``torchvision:<arch>``: torchvision classifiers (``weights=None``), optionally with surgery.

``create_model("torchvision:resnet18", num_classes=8, surgery={"kind": "eca", "min_channels": 64})``
builds torchvision's ResNet-18 and inserts ECA after every convolution with >= 64 outputs. The
model's config records the resolved spec (explicit ``targets``) under ``extra["surgery"]``, which an
export writes into ``build_kwargs``, so the entry rebuilds the same network.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from eca_serve.models._categories import default_categories
from eca_serve.models._config import ModelConfig
from eca_serve.models._registry import register_model
from eca_serve.models.surgery.graph import apply_surgery
from eca_serve.models.surgery.spec import resolve_spec

PREFIX = "torchvision:"

# architecture -> state-dict prefix of its classification layer
TORCHVISION_HEADS: dict[str, str] = {
    "resnet18": "fc",
    "resnet50": "fc",
    "mobilenet_v2": "classifier.1",
    "mobilenet_v3_small": "classifier.3",
    "mobilenet_v3_large": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "regnet_x_400mf": "fc",
    "regnet_y_400mf": "fc",
    "convnext_tiny": "classifier.2",
}


def build_torchvision(arch: str, *, num_classes: int = 1000, surgery: Mapping[str, Any] | None = None) -> nn.Module:
    """torchvision's ``arch`` with random weights, traced, with ``surgery`` applied when given.

    Args:
        arch: A key of `TORCHVISION_HEADS`.
        num_classes: Size of the classification layer.
        surgery: A `SurgerySpec` as a dict, with ``targets`` or with ``min_channels``/``paths`` to choose them.

    Returns:
        A GraphModule with ``forward``, ``forward_with_attention``, ``forward_with_embedding``, ``attention_layers``, ``config`` and
        ``surgery_spec`` (None without surgery); state-dict keys are torchvision's plus ``<conv>.<kind>.*``.
    """
    import torchvision

    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    spec = resolve_spec(net, surgery) if surgery else None
    model = apply_surgery(net, spec, head=TORCHVISION_HEADS[arch])
    extra = {"surgery": spec.to_dict()} if spec else {}
    model.config = ModelConfig(name=PREFIX + arch, task="classification", architecture=arch, num_classes=num_classes,
                               categories=default_categories(num_classes), attention=spec.kind if spec else None,
                               extra=extra)
    return model


def _register(arch: str, head: str) -> None:
    def builder(**kwargs: Any) -> nn.Module:
        return build_torchvision(arch, **kwargs)

    builder.__name__ = builder.__qualname__ = PREFIX + arch
    builder.__doc__ = f"torchvision {arch} (random weights), optionally with ECA/SE surgery."
    register_model(task="classification", head=head, attention=None)(builder)


for _arch, _head in TORCHVISION_HEADS.items():
    _register(_arch, _head)

# the detectors' entries (``torchvision:fasterrcnn_resnet50_fpn``, ...) register on import
from eca_serve.models.surgery import torchvision_detection as _detection  # noqa: E402,F401
