"""A documented, deterministic weight recipe shared by our tests and `bench/authors_logits.py`.

The same state-dict layout filled by this recipe in the authors' code and in ours must give the same
logits; the golden logits in ``tests/fixtures/authors_logits.npz`` were recorded from the authors' code
with it. Every tensor is drawn from its own generator, seeded with ``crc32(key) + seed``, so the values
do not depend on the order of the keys or on the library that built the model:

- ``*.num_batches_tracked``: 0.
- ``*.running_mean``: N(0, 0.1^2); ``*.running_var``: U(0.5, 1.5); the BN ``weight``: U(0.5, 1.5) and
  ``bias``: N(0, 0.1^2) (a BN is a 1-D ``weight`` whose module also has ``running_var``), so that BN
  is never the identity.
- other tensors of 2+ dims (convolutions, linear layers, ECA's [1, 1, k]): N(0, gain / fan_in), fan_in the
  product of all dims but the first.
- other 1-D tensors (biases): N(0, 0.1^2).
- DGC ``*._inactive_channels`` ([1]): ``round(C_in * (1 - gate_factor))`` with C_in from the sibling
  ``norm.weight`` (the count the authors' schedule ends at, so the gating drops 3/4 of each head's inputs).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Mapping

import torch
from torch import Tensor

DGC_GATE_FACTOR = 0.25


def seeded_tensor(key: str, shape: tuple[int, ...], seed: int, is_bn: bool, gain: float) -> Tensor:
    """One float32 tensor of ``shape`` for state-dict entry ``key`` (see the module docstring)."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()) + seed)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var" or (is_bn and leaf == "weight"):
        return 0.5 + torch.rand(shape, generator=gen)
    if len(shape) == 1:  # running_mean, BN bias, any other bias
        return 0.1 * torch.randn(shape, generator=gen)
    fan_in = 1
    for dim in shape[1:]:
        fan_in *= dim
    return torch.randn(shape, generator=gen) * (gain / fan_in) ** 0.5


def seeded_state(template: Mapping[str, Tensor], seed: int = 0, gain: float = 1.0) -> OrderedDict[str, Tensor]:
    """The recipe applied to every entry of ``template`` (a state dict: names, shapes and dtypes; any device).

    ``gain`` scales the weight variance: 1 keeps deep residual networks finite, 2 keeps the signal of
    plain (MobileNet) and dense networks from fading into the BN biases.
    """
    state: OrderedDict[str, Tensor] = OrderedDict()
    for key, ref in template.items():
        prefix, leaf = key.rsplit(".", 1) if "." in key else ("", key)
        if leaf == "num_batches_tracked":
            state[key] = torch.zeros(ref.shape, dtype=ref.dtype)
        elif leaf == "_inactive_channels":
            c_in = template[f"{prefix}.norm.weight"].shape[0]
            state[key] = torch.full(ref.shape, float(round(c_in * (1.0 - DGC_GATE_FACTOR))), dtype=ref.dtype)
        else:
            is_bn = leaf in ("weight", "bias") and f"{prefix}.running_var" in template
            state[key] = seeded_tensor(key, tuple(ref.shape), seed, is_bn, gain).to(ref.dtype)
    return state


def seeded_input(batch: int, size: int = 224, seed: int = 1234) -> Tensor:
    """An image-like input [batch, 3, size, size], batch 1 or 2 (row 0 the same for both).

    Smooth random patterns (an 8x8 N(0, 1) grid, bilinearly upsampled) plus N(0, 0.1^2) pixel noise:
    white noise alone would pool to nearly the same features for every image, and so to logits that
    hardly depend on the input.
    """
    if batch not in (1, 2):
        raise ValueError(f"batch must be 1 or 2, got {batch}")
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn((2, 3, 8, 8), generator=gen)
    noise = 0.1 * torch.randn((2, 3, size, size), generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) + noise
    return image[:batch].clone()
