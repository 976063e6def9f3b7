"""The surgery spec: what was inserted where, enough for `create_model` to rebuild the network."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from torch import nn

from eca_serve.errors import ConfigError
from eca_serve.layers import EcaModule, SEModule
from eca_serve.models.surgery.gates import INITS, SurgicalEca, SurgicalSE

KINDS = ("eca", "se")


@dataclass(frozen=True)
class SurgerySpec:
    """Channel attention inserted after selected convolutions (after their BatchNorm when one follows).

    The inserted module of the convolution at path ``P`` is registered as ``P.eca`` (or ``P.se``);
    every original parameter and buffer keeps its state-dict key.

    Attributes:
        kind: ``"eca"`` or ``"se"``.
        targets: Module paths of the convolutions (relative to the whole model), in graph order.
        k_size: ECA kernel for every target; None: the paper's adaptive rule per target's channels.
        reduction: SE reduction ratio (hidden = C // reduction) when ``latent_channels`` is None.
        latent_channels: SE hidden width as in Composer: a fraction of C if < 1, else an absolute width.
        init: ``"identity"`` (gate exactly 1 at first) or ``"paper"`` (plain sigmoid gate, default init).
        root: Path of the submodule that is rewritten (``""``: the whole model; ``"backbone.body"`` for a
            torchvision detector, whose own forward cannot be traced).
    """

    kind: str
    targets: tuple[str, ...]
    k_size: int | None = None
    reduction: int = 16
    latent_channels: float | None = None
    init: str = "identity"
    root: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown surgery kind {self.kind!r}; choose one of {list(KINDS)}")
        if self.init not in INITS:
            raise ConfigError(f"unknown surgery init {self.init!r}; choose one of {list(INITS)}")
        object.__setattr__(self, "targets", tuple(self.targets))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (targets as a list)."""
        out = dataclasses.asdict(self)
        out["targets"] = list(self.targets)
        return out

    def module_path(self, target: str) -> str:
        """Path of the attention module inserted for the convolution ``target``, e.g. ``layer1.0.conv1.eca``."""
        return f"{target}.{self.kind}"

    def make_gate(self, channels: int) -> nn.Module:
        """A fresh attention module for a convolution with ``channels`` outputs."""
        if self.kind == "eca":
            return SurgicalEca(channels, self.k_size, self.init)
        return SurgicalSE(channels, self.hidden(channels), self.init)

    def hidden(self, channels: int) -> int:
        """SE bottleneck width for ``channels``."""
        if self.latent_channels is None:
            return max(channels // self.reduction, 1)
        if self.latent_channels < 1:
            return max(int(channels * self.latent_channels), 1)
        return int(self.latent_channels)


def is_inside_attention(path: str, attention_paths: Sequence[str]) -> bool:
    """Whether ``path`` lies inside one of the (existing) channel-attention modules."""
    return any(path.startswith(p + ".") for p in attention_paths)


def existing_attention(model: nn.Module) -> list[str]:
    """Paths of channel-attention modules already in ``model`` (ours, or torchvision's SqueezeExcitation)."""
    from torchvision.ops import SqueezeExcitation

    kinds = (EcaModule, SEModule, SqueezeExcitation)
    return [p for p, m in model.named_modules() if isinstance(m, kinds)]


def select_targets(model: nn.Module, *, min_channels: int | None = None, paths: Sequence[str] | None = None,
                   root: str = "") -> tuple[str, ...]:
    """Convolutions to put attention after: every ``nn.Conv2d`` under ``root`` with at least
    ``min_channels`` outputs (as Composer's Squeeze-Excite method), or exactly ``paths``.

    Convolutions inside existing attention modules (the FC layers of EfficientNet's and
    MobileNetV3's SE blocks) are never selected: they see a 1x1 map, where channel attention is moot.

    Raises:
        ConfigError: both or neither selector given, or a path that is not a Conv2d under ``root``.
    """
    if (min_channels is None) == (paths is None):
        raise ConfigError("select targets by exactly one of min_channels or paths")
    modules = dict(model.named_modules())
    prefix = f"{root}." if root else ""
    if paths is not None:
        for p in paths:
            if not isinstance(modules.get(p), nn.Conv2d) or not p.startswith(prefix):
                raise ConfigError(f"surgery target {p!r} is not an nn.Conv2d under {root or 'the model'}")
        return tuple(paths)
    skip = existing_attention(model)
    return tuple(p for p, m in modules.items() if isinstance(m, nn.Conv2d) and p.startswith(prefix)
                 and m.out_channels >= min_channels and not is_inside_attention(p, skip))


def resolve_spec(model: nn.Module, request: Mapping[str, Any]) -> SurgerySpec:
    """A spec from a request dict: the spec's own fields, with ``targets`` given directly or chosen by
    ``min_channels`` or ``paths`` (see `select_targets`)."""
    fields = {f.name for f in dataclasses.fields(SurgerySpec)}
    unknown = set(request) - fields - {"min_channels", "paths"}
    if unknown:
        raise ConfigError(f"unknown surgery options {sorted(unknown)}; use {sorted(fields | {'min_channels', 'paths'})}")
    args = {k: v for k, v in request.items() if k in fields}
    if "targets" not in args:
        args["targets"] = select_targets(model, min_channels=request.get("min_channels"), paths=request.get("paths"),
                                         root=request.get("root", ""))
    return SurgerySpec(**args)
