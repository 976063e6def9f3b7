"""ResNeSt and DGC: the authors' layouts and parameter counts, strict loading of their release formats,
their inference semantics, attention read-out, export with parity, and serving."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

import eca_serve
from eca_serve.errors import CheckpointError
from eca_serve.layers import DynamicMultiHeadConv, SplitAttnConv2d, keep_mask
from eca_serve.models.arch_detect import detect_architecture
from eca_serve.models.checkpoint import read_checkpoint
from eca_serve.models.dgc import scheduled_inactive, set_inactive_channels

LAYOUTS = Path(__file__).parent / "data" / "family_state_dict_keys"  # recorded from the authors' code
FAMILIES = ["resnest50", "resnest101", "dgc_resnet18", "dgc_condensenet"]
DATA_PARALLEL = {"dgc_resnet18", "dgc_condensenet"}  # the DGC release is a DataParallel training checkpoint


def layout(name: str) -> dict[str, Any]:
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def authors_state(name: str, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Random tensors with the recorded names and shapes; DGC drops 3/4 of each head's inputs."""
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in layout(name)["keys"]:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100, dtype=torch.int64)
        elif key.endswith("_inactive_channels"):
            state[key] = torch.zeros(1)  # set below from the layer's input width
        else:
            state[key] = torch.randn(*shape, generator=gen)
    for key in [k for k in state if k.endswith("_inactive_channels")]:
        c_in = state[key.replace("_inactive_channels", "norm.weight")].shape[0]
        state[key] = torch.tensor([float(c_in - c_in // 4)])
    return state


def save_release(name: str, state: dict[str, torch.Tensor], path: Path) -> Path:
    """ResNeSt: a plain state dict; DGC: {'state_dict' with ``module.`` keys, epoch, ...}; legacy serialisation."""
    if name in DATA_PARALLEL:
        obj: Any = {"epoch": 120, "arch": name, "best_prec1": 75.0,
                    "state_dict": OrderedDict(("module." + k, v) for k, v in state.items())}
    else:
        obj = state
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


@pytest.mark.parametrize("name", FAMILIES)
def test_keys_shapes_and_parameter_count_equal_the_authors(name: str) -> None:
    model = eca_serve.create_model(name)
    recorded = layout(name)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == recorded["keys"]
    assert sum(p.numel() for p in model.parameters()) == recorded["params"]


@pytest.mark.parametrize("name", FAMILIES)
def test_the_release_format_loads_strictly_and_is_recognised(name: str, tmp_path: Path) -> None:
    state = authors_state(name)
    path = save_release(name, state, tmp_path / f"{name}.pth")
    assert detect_architecture(read_checkpoint(path).state_dict) == (name, {})
    model = eca_serve.create_model(name, weights=path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    if name in DATA_PARALLEL:
        first = next(m for m in model.modules() if isinstance(m, DynamicMultiHeadConv))
        assert int(first._inactive_channels) == first.in_channels - first.in_channels // 4


@pytest.mark.parametrize("name", ["resnest50", "dgc_resnet18"])
def test_wrong_shapes_and_missing_keys_are_named(name: str, tmp_path: Path) -> None:
    state = authors_state(name)
    victim, dropped = ("layer1.0.conv2.fc1.weight", "layer4.2.conv2.bn1.running_var") if name == "resnest50" else \
        ("layer1.0.conv1.headconv_2.fc1.weight", "layer4.1.conv2.headconv_3.fc2.bias")
    state[victim] = torch.zeros(3, 3)
    del state[dropped]
    path = save_release(name, state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        eca_serve.create_model(name, weights=path)
    assert victim in str(err.value) and dropped in str(err.value)


def test_keep_mask_drops_the_least_salient_as_the_authors_topk() -> None:
    saliency = torch.rand(5, 32, generator=torch.Generator().manual_seed(0))
    for n in (0, 1, 24, 31):
        lowest = saliency.topk(n, dim=1, largest=False).values.max(dim=1, keepdim=True).values if n else None
        expected = torch.ones_like(saliency) if n == 0 else (saliency > lowest).float()
        mask = keep_mask(saliency, torch.tensor([float(n)]))
        assert torch.equal(mask, expected) and torch.all(mask.sum(1) == 32 - n)


def test_dgc_schedule_ends_at_the_gate_factor() -> None:
    assert [scheduled_inactive(64, 0.25, p) for p in (0.0, 1 / 12, 0.5, 0.75, 1.0)] == [0, 0, 30, 48, 48]


def test_split_attention_is_an_r_softmax_and_a_sigmoid_for_radix_one() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    two = SplitAttnConv2d(16, 16, radix=2).eval()
    out, w = two.forward_with_weights(x)
    assert out.shape == (2, 16, 8, 8) and w.shape == (2, 2, 16)
    torch.testing.assert_close(w.sum(1), torch.ones(2, 16))
    one = SplitAttnConv2d(16, 16, radix=1).eval()
    _, w1 = one.forward_with_weights(x)
    assert w1.shape == (2, 1, 16) and bool(((w1 > 0) & (w1 < 1)).all()) and not torch.allclose(w1.sum(1), torch.ones(2, 16))


def test_dgc_heads_keep_the_buffered_count_of_input_channels() -> None:
    model = tame(eca_serve.create_model("dgc_resnet18", num_classes=4, widths=(16, 32, 64, 128)))
    set_inactive_channels(model, 1.0)
    with torch.no_grad():
        logits, attention = model.forward_with_attention(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 4) and list(attention) == model.attention_layers
    keep = attention["layer2.0.conv2.keep"]
    assert keep.shape == (2, 4, 32) and torch.all(keep.sum(-1) == 32 - 24)
    assert attention["layer2.0.downsample.0.saliency"].shape == (2, 4, 16)


def tame(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded random weights a random network survives: saliency near 1 (distinct per channel), BN stats
    calibrated on noise; untouched, unbounded saliency compounds over the layers and overflows."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, DynamicMultiHeadConv):
            for head in m.heads:
                head.fc2.weight.data.mul_(0.01)
                head.fc2.bias.data = 0.5 + torch.rand(head.fc2.bias.shape, generator=gen)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64, generator=gen))
    return model.eval()


# --- export with parity, and serving over HTTP -------------------------------------------------------

SMALL = {"resnest50": {"widths": (8, 16, 32, 64), "stem_width": 8}, "dgc_resnet18": {"widths": (16, 32, 64, 128)}}
CLASSES = ["cat", "dog", "car", "tree", "sky", "sea"]


def small_model(name: str) -> torch.nn.Module:
    """A narrow, seeded random model with 6 classes and a 64 px input (DGC gating at its final count)."""
    from eca_serve.models import PreprocessConfig

    torch.manual_seed(0)
    model = eca_serve.create_model(name, num_classes=len(CLASSES), categories=CLASSES, **SMALL[name])
    model.config = model.config.replace(preprocess=PreprocessConfig(input_size=(64, 64), resize=72))
    if name.startswith("dgc"):
        set_inactive_channels(model, 1.0)
    return tame(model)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.nn.Module]]:
    from eca_serve.export import ExportOptions, export_model

    root = tmp_path_factory.mktemp("families_repo")
    models = {}
    for name in SMALL:
        models[name] = small_model(name)
        export_model(models[name], root / name / "1", ExportOptions(name=name, check_inputs=[(1, 64, 64), (3, 64, 64)]))
    return root, models


@pytest.mark.parametrize("name", list(SMALL))
def test_export_parity_and_attention_specs(name: str, repository) -> None:
    from eca_serve.repository import read_config

    root, models = repository
    report = json.loads((root / name / "1" / "parity.json").read_text())
    assert report["passed"] is True
    assert {(r["backend"], r["input_shape"][0]) for r in report["rows"]} >= {("onnxruntime", 1), ("onnxruntime", 3),
                                                                            ("torchscript_frozen", 1), ("torchscript_frozen", 3)}
    assert max(r["max_abs_attention"] for r in report["rows"]) < 1e-4
    config = read_config(root / name / "1")
    first = config.attention[0]
    if name == "resnest50":
        assert (first.name, first.kind, first.channels, first.shape) == ("layer1.0.conv2", "resnest", 8, [2, 8])
        assert len(config.attention) == 16
    else:
        assert [(a.name, a.kind, a.shape) for a in config.attention[:2]] == [
            ("layer1.0.conv1.saliency", "dgc", [4, 16]), ("layer1.0.conv1.keep", "dgc", [4, 16])]
        assert len(config.attention) == 2 * 19
    outputs = {o.name: o.shape for o in config.outputs}
    assert outputs[first.output] == [-1, *first.shape]


@pytest.fixture(scope="module")
def server(repository):
    from eca_serve.settings import Settings
    from tests.serving_utils import running_server

    root, _ = repository
    with running_server(Settings(model_repository=root, max_batch_size=4, max_queue_delay_ms=5)) as (base, _app):
        yield base


@pytest.mark.parametrize("name", list(SMALL))
def test_served_classify_and_attention_of_a_photo(name: str, server, repository) -> None:
    import httpx
    import numpy as np

    from eca_serve.repository import read_config
    from tests.test_serving import reference

    root, models = repository
    data = (Path(__file__).parent.parent / "examples" / "cat.jpg").read_bytes()
    files = {"file": ("cat.jpg", data, "image/jpeg")}
    classify = httpx.post(f"{server}/v1/models/{name}/classify?top_k=3", files=files, timeout=60)
    assert classify.status_code == 200 and len(classify.json()["results"][0]["predictions"]) == 3
    body = httpx.post(f"{server}/v1/models/{name}/attention", files=files, timeout=60).json()
    layers = body["results"][0]["layers"]
    model = models[name]
    assert [l["name"] for l in layers] == model.attention_layers
    probabilities, attention = reference(model, read_config(root / name / "1"), data)
    assert body["results"][0]["predictions"][0]["index"] == int(probabilities.argmax())
    for layer in layers:
        expected = attention[layer["name"]]
        assert layer["shape"] == list(expected.shape) and len(layer["weights"]) == expected.size
        np.testing.assert_allclose(layer["weights"], expected.reshape(-1), atol=1e-4)
    if name == "dgc_resnet18":
        keep = np.asarray(layers[1]["weights"]).reshape(layers[1]["shape"])
        assert layers[1]["kind"] == "dgc" and (keep.sum(-1) == 16 - 12).all()
    png = httpx.post(f"{server}/v1/models/{name}/attention?format=png", files=files, timeout=60)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    outputs = {o["name"]: o["shape"] for o in httpx.get(f"{server}/v2/models/{name}", timeout=60).json()["outputs"]}
    assert outputs[f"attention/{layers[0]['name']}"] == [-1, *layers[0]["shape"]]


def test_cli_lists_and_inspects_with_the_recorded_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from eca_serve.cli import main

    assert main(["models", "--json"]) == 0
    params = {row["name"]: row["params"] for row in json.loads(capsys.readouterr().out)}
    assert {n: params[n] for n in FAMILIES} == {n: layout(n)["params"] for n in FAMILIES}
    path = save_release("dgc_resnet18", authors_state("dgc_resnet18"), tmp_path / "dgc.pth.tar")
    assert main(["inspect", str(path), "--input-size", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["architecture"], report["params"], report["loaded"]) == ("dgc_resnet18", 12_335_144, "strict")
    assert (report["attention"], report["attention_layers"]) == ("dgc", 2 * 19)


def test_train_dgc_on_shapes_follows_the_schedule_and_exports(tmp_path: Path) -> None:
    from eca_serve.cli import main
    from eca_serve.data import generate
    from eca_serve.repository import read_config

    generate(tmp_path / "data" / "train", kind="classify", count=32, seed=1, size=32)
    generate(tmp_path / "data" / "val", kind="classify", count=8, seed=2, size=32)
    entry = tmp_path / "models" / "dgc" / "1"
    common = ["train", "classify", "--data", str(tmp_path / "data"), "--input-size", "32", "--resize", "32",
              "--batch-size", "16", "--optimizer", "adamw", "--lr", "0.01", "--warmup-steps", "1", "--workers", "0", "--json"]
    assert main([*common, "--model", "dgc_resnet18", "--arg", "widths=[16,32,64,128]", "--epochs", "4",
                 "--out", str(tmp_path / "run"), "--export-to", str(entry)]) == 0
    history = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["train_state"]["losses"]
    assert len(history) == 8 and all(torch.isfinite(torch.tensor(history)))
    assert read_config(entry).parity["passed"]
    model = eca_serve.create_model("dgc_resnet18", weights=entry / "weights.safetensors")
    convs = [m for m in model.modules() if isinstance(m, DynamicMultiHeadConv)]
    assert [int(m._inactive_channels) for m in convs[:3]] == [12, 12, 12] and int(convs[-1]._inactive_channels) == 96
    assert main([*common, "--model", "resnest50", "--arg", "widths=[8,16,32,64]", "--arg", "stem_width=8", "--epochs", "1",
                 "--out", str(tmp_path / "run_resnest")]) == 0


def test_dgc_condensenet_exports_with_parity(tmp_path: Path) -> None:
    from eca_serve.export import ExportOptions, export_model

    torch.manual_seed(0)
    model = eca_serve.create_model("dgc_condensenet", num_classes=5, stages=(1, 2, 1, 1, 1), growth=(4, 4, 8, 8, 16))
    set_inactive_channels(model, 1.0)
    config = export_model(tame(model), tmp_path / "dgc_cn" / "1",
                          ExportOptions(name="dgc_cn", check_inputs=[(1, 64, 64), (2, 96, 96)]))
    assert config.parity["passed"] and config.attention[0].name == "features.denseblock_1.denselayer_1.conv_1.saliency"
    assert config.attention[0].shape == [4, 8] and len(config.attention) == 2 * 6
