"""Our models against the authors' own code: logits and attention with the same seeded weights.

For each model this builds the authors' network from their repository, fills its state dict with the
shared recipe of ``tests/seeded_weights.py``, saves it in the authors' release format (ECA and DGC: a
DataParallel training checkpoint ``{'epoch', 'arch', 'state_dict': {'module.*'}, 'best_prec1',
'optimizer'}`` in legacy serialisation; ResNeSt: a plain state dict), loads that file into ours with
``eca_serve.create_model(name, weights=file)``, and compares eval-mode logits at batch 1 and 2 and the
attention values (ECA: the sigmoid weights; ResNeSt: the r-softmax output; DGC: each head's saliency
and the gate it multiplies the input by, i.e. the saliency with the dropped channels zeroed).

With ``--write`` it records the AUTHORS' batch-2 logits and a few attention tensors to
``tests/fixtures/authors_logits.npz``; ``tests/test_authors_logits.py`` then checks our models against
them without the authors' code.

Usage (the three repositories checked out side by side, as ``git archive`` of their HEAD):
    PYTHONPATH=$PWD python bench/authors_logits.py --authors /tmp/authors [--only resnest50] [--write]
    (expects <authors>/BangguWu+ECANet, <authors>/zhanghang1989+ResNeSt, <authors>/hellozhuo+dgc)

Shims, all at run time and outside the authors' files: ``fvcore.common.registry.Registry`` (the only
fvcore piece ResNeSt's model files import) is a stub; nothing else needs patching on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import types
from argparse import Namespace
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import eca_serve  # noqa: E402
from tests.seeded_weights import seeded_input, seeded_state  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "authors_logits.npz"
REPOS = {"eca": "BangguWu+ECANet", "resnest": "zhanghang1989+ResNeSt", "dgc": "hellozhuo+dgc"}
Taps = dict[str, Tensor]


@contextlib.contextmanager
def authors_import_path(root: Path) -> Iterator[None]:
    """Import from ``root`` (their top-level ``models``/``layers`` names), then forget those modules."""
    before = set(sys.modules)
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for name in set(sys.modules) - before:
            if not name.startswith(("torch", "numpy", "fvcore")):
                del sys.modules[name]


def _stub_fvcore() -> None:
    class Registry:
        def __init__(self, name: str) -> None:
            self.name: str = name
            self.items: dict[str, Any] = {}

        def register(self, obj: Any = None) -> Any:
            def add(o: Any) -> Any:
                self.items[o.__name__] = o
                return o
            return add if obj is None else add(obj)

    for name in ("fvcore", "fvcore.common", "fvcore.common.registry"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["fvcore.common.registry"].Registry = Registry  # type: ignore[attr-defined]


def build_authors(name: str, root: Path) -> nn.Module:
    """The authors' network for our registry ``name``, built by their own code."""
    if name.startswith("resnest"):
        _stub_fvcore()
        with authors_import_path(root / REPOS["resnest"]):
            from resnest.torch import resnest50, resnest101
            return {"resnest50": resnest50, "resnest101": resnest101}[name]()
    if name.startswith("dgc"):
        args = Namespace(heads=4, squeeze_rate=16, gate_factor=0.25, bottleneck=4, group_3x3=4, data="imagenet",
                         stages=[4, 6, 8, 10, 8], growth=[8, 16, 32, 64, 128], num_classes=1000)
        with authors_import_path(root / REPOS["dgc"]):
            import models
            return models.dyresnet18(args) if name == "dgc_resnet18" else models.dydensenet(args)
    with authors_import_path(root / REPOS["eca"]):
        import models
        if name == "eca_mobilenet_v2":
            return models.eca_mobilenet_v2()
        return models.eca_resnet50(k_size=[3, 5, 5, 7])


def authors_taps(model: nn.Module) -> Callable[[], Taps]:
    """Forward hooks on the authors' modules; the returned function collects ``{our read-out name: [B, ...]}``."""
    taps: Taps = OrderedDict()

    def keep(key: str, fn: Callable[..., Tensor]) -> Callable[..., None]:
        return lambda _m, inp, out: taps.__setitem__(key, fn(inp, out).detach().clone())

    for path, m in model.named_modules():
        kind = type(m).__name__
        if kind == "eca_layer":
            m.sigmoid.register_forward_hook(keep(path, lambda _i, o: o.flatten(1)))
        elif kind == "SplAtConv2d":
            m.rsoftmax.register_forward_hook(keep(path, lambda _i, o, r=m.radix: o.reshape(o.shape[0], r, -1)))
        elif kind == "HeadConv":
            conv_path, head = path.rsplit(".headconv_", 1)
            m.relu_fc2.register_forward_hook(keep(f"{conv_path}.saliency.{head}", lambda _i, o: o))
            # their gate mask_c: the pooled gated input over the pooled input, where that is non-zero
            gate = keep(f"{conv_path}.gate.{head}", lambda i, o: _ratio(o[0].mean((2, 3)), i[1].flatten(1)))
            m.register_forward_hook(gate)

    def collect() -> Taps:
        heads: dict[str, list[Tensor]] = OrderedDict()
        for key, value in taps.items():  # DGC heads run in order 0..heads-1 within each conv
            base = key.rsplit(".", 1)[0] if (".saliency." in key or ".gate." in key) else key
            heads.setdefault(base, []).append(value)
        taps.clear()
        return OrderedDict((k, torch.stack(v, 1) if k.endswith((".saliency", ".gate")) else v[0])
                           for k, v in heads.items())
    return collect


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-30), torch.full_like(num, float("nan")))


def save_release(name: str, state: OrderedDict[str, Tensor], path: Path) -> Path:
    """The authors' release format: DataParallel training checkpoint (ECA, DGC) or plain state dict (ResNeSt)."""
    if name.startswith("resnest"):
        torch.save(state, path)
        return path
    wrapped = OrderedDict(("module." + k, v) for k, v in state.items())
    optimizer = {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9, "params": [0, 1]}]}
    torch.save({"epoch": 120, "arch": name, "state_dict": wrapped, "best_prec1": 0.0, "optimizer": optimizer},
               path, _use_new_zipfile_serialization=False)
    return path


def our_attention(name: str, attn: dict[str, Tensor]) -> Taps:
    """Our read-outs in the authors' tap names (DGC: ``.gate`` = saliency * keep)."""
    if not name.startswith("dgc"):
        return OrderedDict(attn)
    out: Taps = OrderedDict()
    for key, value in attn.items():
        base = key.rsplit(".", 1)[0]
        if key.endswith(".saliency"):
            out[key] = value
            out[base + ".gate"] = value * attn[base + ".keep"]
    return out


def max_diff(theirs: Tensor, ours: Tensor) -> float:
    """Max |theirs - ours| over the entries where the authors' value is defined (not NaN)."""
    ok = ~torch.isnan(theirs)
    return float((theirs[ok] - ours[ok]).abs().max()) if bool(ok.any()) else 0.0


def compare(name: str, root: Path, tmp: Path) -> dict[str, Any]:
    """Build both, load the authors' release file into ours, compare; returns numbers and the authors' outputs."""
    theirs = build_authors(name, root).eval()
    state = seeded_state(theirs.state_dict(), gain=GAINS[name])
    theirs.load_state_dict(state)
    ours = eca_serve.create_model(name, weights=save_release(name, state, tmp / f"{name}.pth"))
    collect = authors_taps(theirs)
    report: dict[str, Any] = {"model": name}
    with torch.inference_mode():
        for batch in (1, 2):
            x = seeded_input(batch)
            ref = theirs(x)
            ref = ref[0] if isinstance(ref, tuple) else ref  # DGC returns (logits, lasso terms)
            ref_attn = collect()
            logits, attn = ours.forward_with_attention(x)
            mine = our_attention(name, attn)
            assert list(mine) == list(ref_attn), (list(mine)[:4], list(ref_attn)[:4])
            report[f"logit_diff_b{batch}"] = max_diff(ref, logits)
            report[f"attn_diff_b{batch}"] = max(max_diff(ref_attn[k], mine[k]) for k in ref_attn)
            report[f"argmax_equal_b{batch}"] = bool((ref.argmax(1) == logits.argmax(1)).all())
        report["logit_scale"] = float(ref.abs().max())
        # how much the logits depend on the input (not just on the biases)
        report["row_spread"] = float((ref[0] - ref[1]).abs().max())
        report["attention_layers"] = len(ref_attn)
        report["_logits"], report["_attn"] = ref, ref_attn
    return report


def fixture_arrays(report: dict[str, Any]) -> dict[str, np.ndarray]:
    """The authors' batch-2 logits and their first and last attention read-outs (both kinds for DGC)."""
    name, attn = report["model"], report["_attn"]
    keys = list(attn)
    picked = keys[:2] + keys[-2:] if name.startswith("dgc") else [keys[0], keys[-1]]
    arrays = {f"{name}/logits": report["_logits"].numpy()}
    arrays.update({f"{name}/attn/{k}": attn[k].numpy() for k in picked})
    return arrays


def authors_commits(root: Path) -> dict[str, str]:
    """Commit of each authors' repository mirror, if the mirror is found (for the fixture's provenance)."""
    out = {}
    for repo in REPOS.values():
        git_dir = Path("/work/.mirror") / repo / "repo"
        if git_dir.is_dir():
            out[repo] = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"],
                                       capture_output=True, text=True).stdout.strip()
    return out


# weight gain of the recipe per model (see seeded_state): the largest that keeps the logits finite and input-dependent
GAINS = {"eca_resnet50": 1.0, "eca_mobilenet_v2": 2.0, "resnest50": 1.0, "resnest101": 1.0, "dgc_resnet18": 1.5,
         "dgc_condensenet": 2.0}
MODELS = list(GAINS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", type=Path, required=True, help="folder holding the three checkouts")
    parser.add_argument("--only", nargs="*", default=MODELS, choices=MODELS)
    parser.add_argument("--write", action="store_true", help=f"record the authors' outputs to {FIXTURE}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    arrays: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            report = compare(name, args.authors, Path(tmp))
            arrays.update(fixture_arrays(report))
            print(json.dumps({k: v for k, v in report.items() if not k.startswith("_")}), flush=True)
    if args.write:
        meta = {"commits": authors_commits(args.authors), "recipe": "tests/seeded_weights.py seed 0", "gains": GAINS,
                "input": "seeded_input(2) seed 1234, 224 px", "torch": torch.__version__}
        arrays["meta"] = np.array(json.dumps(meta))
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(FIXTURE, **arrays)
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
