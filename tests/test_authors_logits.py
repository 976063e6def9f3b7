"""Our models reproduce the logits and attention that the authors' own code computes.

``tests/fixtures/authors_logits.npz`` holds, per model, the logits [2, 1000] and a few attention
tensors that the AUTHORS' networks (ECANet, ResNeSt, DGC repositories; commits in the file's ``meta``)
computed with the weights of `tests.seeded_weights` (recorded by ``bench/authors_logits.py``, which
also printed our max abs logit difference: <= 1.5e-6). Here the same weights go through the authors'
release format and our checkpoint loader into our model, which must give the same numbers.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import eca_serve
from tests.seeded_weights import seeded_input, seeded_state

FIXTURE = Path(__file__).parent / "fixtures" / "authors_logits.npz"
MODELS = ["eca_resnet50", "eca_mobilenet_v2", "resnest50", "resnest101", "dgc_resnet18", "dgc_condensenet"]
# of the largest |logit|; the smallest wrong-semantics change bench/authors_logits.py saw was 2%
RELATIVE_TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    with np.load(FIXTURE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_release(name: str, gain: float, tmp_path: Path) -> torch.nn.Module:
    """Our model loaded from the seeded weights saved as the authors release them."""
    with torch.device("meta"):  # only the names, shapes and dtypes are needed
        template = eca_serve.create_model(name).state_dict()
    state = seeded_state(template, gain=gain)
    path = tmp_path / f"{name}.pth"
    if name.startswith("resnest"):  # torch.hub state dict
        torch.save(state, path)
    else:  # DataParallel training checkpoint, legacy serialisation
        wrapped = OrderedDict(("module." + k, v) for k, v in state.items())
        torch.save({"epoch": 120, "arch": name, "state_dict": wrapped, "best_prec1": 0.0}, path,
                   _use_new_zipfile_serialization=False)
    return eca_serve.create_model(name, weights=path)


def readouts(attention: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our attention in the fixture's names; a DGC conv's ``gate`` is its saliency times its keep-mask."""
    out = dict(attention)
    for key, value in attention.items():
        if key.endswith(".keep"):
            base = key[: -len(".keep")]
            out[base + ".gate"] = attention[base + ".saliency"] * value
    return out


def assert_close(ours: Tensor, theirs: np.ndarray, scale: float, what: str) -> None:
    ref = torch.from_numpy(theirs)
    defined = ~torch.isnan(ref)  # the authors' DGC gate is undefined on channels whose pooled input is 0
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = float((ours[defined] - ref[defined]).abs().max())
    assert diff <= RELATIVE_TOLERANCE * scale, f"{what}: max abs diff {diff:.3g} > {RELATIVE_TOLERANCE * scale:.3g}"


@pytest.mark.parametrize("name", MODELS)
def test_logits_and_attention_equal_the_authors_code(name: str, recorded: dict[str, np.ndarray],
                                                     tmp_path: Path) -> None:
    gain = json.loads(str(recorded["meta"]))["gains"][name]
    model = load_release(name, gain, tmp_path)
    expected = recorded[f"{name}/logits"]
    scale = max(1.0, float(np.abs(expected).max()))
    with torch.inference_mode():
        logits, attention = model.forward_with_attention(seeded_input(2))
        single = model(seeded_input(1))
    assert_close(logits, expected, scale, f"{name} logits, batch 2")
    assert_close(single, expected[:1], scale, f"{name} logits, batch 1")
    ours = readouts(attention)
    layers = [k.split("/attn/", 1)[1] for k in recorded if k.startswith(f"{name}/attn/")]
    assert layers, f"no attention recorded for {name}"
    for layer in layers:
        assert_close(ours[layer], recorded[f"{name}/attn/{layer}"], 1.0, f"{name} attention {layer}")
