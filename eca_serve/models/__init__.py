"""Architectures, the model registry, configs and checkpoint loading."""

from eca_serve.models import zoo as _zoo  # noqa: F401  (registers the classifiers)
from eca_serve.models import detection as _detection  # noqa: F401  (registers the detectors)
from eca_serve.models import families as _families  # noqa: F401  (registers ResNeSt and DGC)
from eca_serve.models.surgery import torchvision_zoo as _torchvision  # noqa: F401  (registers torchvision:*)
from eca_serve.models._config import ModelConfig, PreprocessConfig
from eca_serve.models._registry import get_entry, list_models, register_model
from eca_serve.models.checkpoint import Checkpoint, load_checkpoint, read_checkpoint
from eca_serve.models.factory import create_model

__all__ = [
    "Checkpoint",
    "ModelConfig",
    "PreprocessConfig",
    "create_model",
    "get_entry",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "register_model",
]
