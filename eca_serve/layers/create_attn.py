"""One factory that maps attention names to modules."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from eca_serve.errors import ConfigError
from eca_serve.layers.eca import EcaModule
from eca_serve.layers.se import SEModule

_ATTENTION: dict[str, Callable[..., nn.Module]] = {"eca": EcaModule, "se": SEModule}


def attention_names() -> list[str]:
    """Names accepted by `create_attn`, sorted."""
    return sorted(_ATTENTION)


def create_attn(name: str | None, channels: int, **kwargs: Any) -> nn.Module | None:
    """Build a channel-attention module by name.

    Args:
        name: ``"eca"``, ``"se"``, or None for no attention.
        channels: Channels C of the feature map the module will scale.
        **kwargs: Module options (``k_size`` for ECA, ``reduction`` for SE).

    Returns:
        The module, or None when ``name`` is None.
    """
    if name is None:
        return None
    try:
        factory = _ATTENTION[name]
    except KeyError:
        raise ConfigError(f"unknown attention {name!r}; choose one of {attention_names()} or None") from None
    return factory(channels, **kwargs)
