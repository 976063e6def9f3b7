"""eca-serve: serving ECA-Net channel-attention CNNs (classification, detection, attention read-out)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models"]


def __getattr__(name: str) -> Any:
    # Lazy: `import eca_serve.batching` (or the CLI's --help) must not pay for importing torch.
    if name in ("create_model", "list_models"):
        from eca_serve import models

        return getattr(models, name)
    raise AttributeError(f"module 'eca_serve' has no attribute {name!r}")
