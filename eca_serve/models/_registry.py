"""Registry of model builders: the builder's function name is the registry key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from eca_serve.errors import ConfigError, UnknownModelError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder and what is known about it before building.

    Attributes:
        name: Registry key (the builder's ``__name__``).
        builder: Keyword-only function returning an ``nn.Module`` with a ``config`` attribute.
        task: ``classification``, ``detection`` or ``instance_segmentation``.
        head: State-dict prefix of the classification layer, used to read ``num_classes`` from weights.
        attention: ``"eca"``, ``"se"`` or None.
    """

    name: str
    builder: Builder
    task: str
    head: str
    attention: str | None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(*, task: str, head: str, attention: str | None) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under its function name; a duplicate name raises."""

    def wrap(fn: Builder) -> Builder:
        if fn.__name__ in _REGISTRY:
            raise ConfigError(f"model {fn.__name__!r} is already registered")
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, task, head, attention)
        return fn

    return wrap


def list_models(task: str | None = None, attention: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by task and attention kind."""
    return sorted(
        e.name
        for e in _REGISTRY.values()
        if (task is None or e.task == task) and (attention is None or e.attention == attention)
    )


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; raises `UnknownModelError` naming close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `eca-serve models`"
        raise UnknownModelError(f"unknown model {name!r}{hint}") from None
