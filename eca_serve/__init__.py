"""eca-serve: serving ECA-Net channel-attention CNNs (classification, detection, attention read-out)."""

from eca_serve.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models"]
