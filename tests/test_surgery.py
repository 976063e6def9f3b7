"""Surgery: ECA/SE inserted into torchvision CNNs, keys kept, identity at init, trainable, exportable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, SqueezeExcitation

from eca_serve.errors import CheckpointError, ConfigError
from eca_serve.introspect import AttentionOutputs, attention_layers
from eca_serve.layers import eca_kernel_size
from eca_serve.models import create_model
from eca_serve.models.surgery import SurgerySpec, SurgicalEca, SurgicalSE, apply_surgery, resolve_spec, select_targets
from eca_serve.models.surgery.torchvision_zoo import TORCHVISION_HEADS

ARCHS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf",
         "convnext_tiny"]
MIN_CHANNELS = 96


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _torchvision(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(arch, weights=None, num_classes=5).eval()


def _expected_targets(model: nn.Module, min_channels: int) -> list[str]:
    """Written independently of `select_targets`: Conv2d >= min_channels outside SqueezeExcitation blocks."""
    se_paths = [p for p, m in model.named_modules() if isinstance(m, SqueezeExcitation)]
    return [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.out_channels >= min_channels
            and not any(p.startswith(s + ".") for s in se_paths)]


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    loss.backward()
    gates = [m for m in model.modules() if isinstance(m, (SurgicalEca, SurgicalSE))]
    # the zero-initialised last layer: the ECA kernel, the SE bias (its weight may see only dead ReLUs)
    last = [m.conv.weight if isinstance(m, SurgicalEca) else m.fc2.bias for m in gates]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last)
    before = [p.detach().clone() for p in last]
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, last))


@pytest.mark.parametrize("kind", ["eca", "se"])
@pytest.mark.parametrize("arch", ARCHS)
def test_surgery_on_torchvision(arch: str, kind: str) -> None:
    model = _torchvision(arch)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _expected_targets(model, MIN_CHANNELS)
    spec = resolve_spec(model, {"kind": kind, "min_channels": MIN_CHANNELS})
    assert list(spec.targets) == expected and expected

    model = apply_surgery(model, spec)
    gates = [p for p, m in model.named_modules() if isinstance(m, (SurgicalEca, SurgicalSE))]
    assert gates == [f"{t}.{kind}" for t in expected] == model.attention_layers
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in original.items())  # every original key and value kept
    assert all(f".{kind}." in k for k in set(state) - set(original))
    with torch.no_grad():
        assert torch.allclose(model(x), reference, atol=1e-5)  # identity at initialisation
        logits, weights = model.forward_with_attention(x)
    assert torch.allclose(logits, reference, atol=1e-5) and list(weights) == gates
    for path in gates:
        channels = model.get_submodule(path).channels
        assert weights[path].shape == (2, channels) and torch.allclose(weights[path], torch.full_like(weights[path], 0.5))
    _train_step(model, x)


def test_eca_kernels_follow_the_adaptive_rule_or_a_fixed_k() -> None:
    model = apply_surgery(_torchvision("resnet50"), resolve_spec(_torchvision("resnet50"), {"kind": "eca", "min_channels": 256}))
    sizes = {m.channels: m.k_size for m in model.modules() if isinstance(m, SurgicalEca)}
    assert sizes == {c: eca_kernel_size(c) for c in (256, 512, 1024, 2048)} == {256: 5, 512: 5, 1024: 5, 2048: 7}
    fixed = apply_surgery(_torchvision("resnet18"), SurgerySpec("eca", ("layer1.0.conv1",), k_size=3))
    assert fixed.get_submodule("layer1.0.conv1.eca").k_size == 3


def test_se_latent_channels_as_composer() -> None:
    fraction = apply_surgery(_torchvision("resnet18"), SurgerySpec("se", ("layer4.0.conv1",), latent_channels=0.125))
    absolute = apply_surgery(_torchvision("resnet18"), SurgerySpec("se", ("layer4.0.conv1",), latent_channels=32))
    reduction = apply_surgery(_torchvision("resnet18"), SurgerySpec("se", ("layer4.0.conv1",), reduction=4))
    widths = [m.get_submodule("layer4.0.conv1.se").fc1.out_channels for m in (fraction, absolute, reduction)]
    assert widths == [64, 32, 128]


def _gate_inputs(model: torch.fx.GraphModule) -> dict[str, str]:
    """Gate path -> target of the module whose output it scales."""
    return {str(n.target): str(n.args[0].target) for n in model.graph.nodes
            if n.op == "call_module" and str(n.target).endswith((".eca", ".se"))}


def test_attention_goes_after_batchnorm_when_one_follows() -> None:
    model = apply_surgery(_torchvision("resnet18"), SurgerySpec("eca", ("layer1.0.conv1", "layer2.0.downsample.0")))
    assert _gate_inputs(model) == {"layer1.0.conv1.eca": "layer1.0.bn1", "layer2.0.downsample.0.eca": "layer2.0.downsample.1"}
    convnext = apply_surgery(_torchvision("convnext_tiny"), SurgerySpec("se", ("features.1.0.block.0",)))
    assert _gate_inputs(convnext) == {"features.1.0.block.0.se": "features.1.0.block.0"}  # a LayerNorm follows, after a permute


def test_paper_init_is_not_identity() -> None:
    model = _torchvision("resnet18")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        paper = apply_surgery(model, resolve_spec(model, {"kind": "eca", "min_channels": 64, "init": "paper"}))
        assert not torch.allclose(paper(x), reference, atol=1e-3)


def test_selection_by_paths_and_errors() -> None:
    model = _torchvision("mobilenet_v2")
    paths = ["features.1.conv.0.0", "features.18.0"]
    assert select_targets(model, paths=paths) == tuple(paths)
    with pytest.raises(ConfigError, match="not an nn.Conv2d"):
        select_targets(model, paths=["features.1.conv.0.1"])  # a BatchNorm2d
    with pytest.raises(ConfigError, match="exactly one"):
        select_targets(model, min_channels=8, paths=paths)
    with pytest.raises(ConfigError, match="unknown surgery kind"):
        resolve_spec(model, {"kind": "cbam", "min_channels": 8})
    model = apply_surgery(model, SurgerySpec("se", tuple(paths)))
    with pytest.raises(ConfigError, match="already has"):
        apply_surgery(model, SurgerySpec("se", tuple(paths)))


def test_existing_se_blocks_are_skipped() -> None:
    model = _torchvision("efficientnet_b0")
    targets = select_targets(model, min_channels=8)
    assert targets and not any(".fc1" in t or ".fc2" in t for t in targets)


def test_detector_backbone_with_frozen_batchnorm() -> None:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    detector = FasterRCNN(backbone, num_classes=3, min_size=96, max_size=96).eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        reference = detector.backbone.body(x)
    spec = resolve_spec(detector, {"kind": "eca", "min_channels": 128, "root": "backbone.body"})
    assert spec.targets[0] == "backbone.body.layer2.0.conv1"
    original = set(detector.state_dict())
    apply_surgery(detector, spec)
    assert original < set(detector.state_dict())
    assert _gate_inputs(detector.backbone.body)["layer2.0.conv1.eca"] == "layer2.0.bn1"  # FrozenBatchNorm2d
    with torch.no_grad():
        features = detector.backbone.body(x)
        assert all(torch.allclose(features[k], reference[k], atol=1e-5) for k in reference)
        _, weights = detector.backbone.body.forward_with_attention(x)
    assert list(weights)[0] == "layer2.0.conv1.eca"
    detector.train()
    losses = detector([torch.rand(3, 96, 96)], [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])}])
    sum(losses.values()).backward()
    assert detector.backbone.body.get_submodule("layer2.0.conv1.eca").conv.weight.grad is not None


def test_registry_rebuilds_from_the_recorded_spec(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = create_model("torchvision:resnet18", num_classes=4, surgery={"kind": "se", "min_channels": 256})
    assert model.config.attention == "se" and model.config.extra["surgery"]["targets"][0] == "layer3.0.conv1"
    rebuilt = create_model("torchvision:resnet18", **model.config.extra, num_classes=4)
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    assert set(TORCHVISION_HEADS) >= {"resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny"}

    # an original (pre-surgery) checkpoint loads: the new modules keep their identity initialisation
    plain = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    save_file(plain.state_dict(), str(tmp_path / "plain.safetensors"))
    tuned = create_model("torchvision:resnet18", weights=tmp_path / "plain.safetensors",
                         surgery={"kind": "eca", "min_channels": 64})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tuned(x), plain(x), atol=1e-5)
    partial = {k: v for k, v in tuned.state_dict().items() if k != "conv1.eca.conv.weight"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match="conv1.eca.conv.weight"):
        create_model("torchvision:resnet18", weights=tmp_path / "partial.safetensors",
                     surgery={"kind": "eca", "min_channels": 64})


@pytest.mark.parametrize(("arch", "kind"), [("resnet18", "eca"), ("mobilenet_v2", "eca"), ("mobilenet_v3_small", "eca"),
                                          ("mobilenet_v3_small", "se"), ("efficientnet_b0", "eca"), ("regnet_y_400mf", "se")])
def test_onnx_has_every_attention_output(arch: str, kind: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    from eca_serve.export.formats import export_classifier_onnx

    model = create_model(f"torchvision:{arch}", num_classes=3, surgery={"kind": kind, "min_channels": 96})
    for m in model.modules():  # move the gates away from their constant initial value
        if isinstance(m, (SurgicalEca, SurgicalSE)):
            nn.init.normal_(m.conv.weight if isinstance(m, SurgicalEca) else m.fc2.weight, std=0.5)
    names = export_classifier_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 64, 64))
    assert names == ["logits"] + [f"attention/{p}" for p in model.attention_layers] + ["embedding"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 80, 72)
    outputs = session.run(names, {"input": x.numpy()})
    with torch.no_grad():
        expected = AttentionOutputs(model)(x)
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A surgically modified torchvision ResNet-18 (ECA after convs with >= 256 outputs) exported with parity."""
    from eca_serve.export import ExportOptions, export_model
    from eca_serve.models import PreprocessConfig

    torch.manual_seed(0)
    model = create_model("torchvision:resnet18", num_classes=3, categories=["a", "b", "c"],
                         surgery={"kind": "eca", "min_channels": 256})
    for m in model.modules():  # trained-looking gates: not all 0.5
        if isinstance(m, SurgicalEca):
            nn.init.normal_(m.conv.weight, std=0.5)
    model.config = model.config.replace(preprocess=PreprocessConfig(input_size=(64, 64), resize=73))
    root = tmp_path_factory.mktemp("models")
    export_model(model, root / "tv" / "1", ExportOptions(name="tv", check_inputs=[(1, 64, 64), (2, 80, 64)]))
    return root, model


def test_export_model_parity_and_config(exported: tuple[Path, nn.Module]) -> None:
    from eca_serve.repository import read_config

    root, model = exported
    config = read_config(root / "tv" / "1")
    assert config.parity["passed"] and config.architecture == "torchvision:resnet18"
    assert {r["backend"] for r in config.parity["rows"]} >= {"onnxruntime", "torchscript_frozen"}
    assert config.build_kwargs["surgery"]["targets"] == list(model.surgery_spec.targets)
    assert [a.name for a in config.attention] == model.attention_layers == [a.name for a in attention_layers(model)]
    assert {a.kind for a in config.attention} == {"eca"} and config.attention[0].output == "attention/layer3.0.conv1.eca"
    rebuilt = create_model(config.architecture, weights=root / "tv" / "1" / "weights.safetensors")
    assert rebuilt.attention_layers == model.attention_layers


@pytest.mark.parametrize("backend", ["onnxruntime", "eager"])
def test_served_attention_read_out(exported: tuple[Path, nn.Module], backend: str) -> None:
    import httpx

    from eca_serve.pipelines.images import DecodeLimits, decode_image
    from eca_serve.pipelines.preprocess import decode_target, preprocess_classification
    from eca_serve.repository import read_config
    from eca_serve.settings import Settings
    from tests.hostile_images import png_bytes
    from tests.serving_utils import running_server

    root, model = exported
    config = read_config(root / "tv" / "1")
    data = png_bytes((64, 64), seed=3)
    x = preprocess_classification(decode_image(data, limits=DecodeLimits(), target=decode_target(config.input)), config.input)
    with torch.no_grad():
        _, expected = model.forward_with_attention(torch.from_numpy(x)[None])
    with running_server(Settings(model_repository=root, backend=backend, max_batch_size=2)) as (base, _):
        response = httpx.post(f"{base}/v1/models/tv/attention?top_k=1", files={"file": ("x.png", data, "image/png")}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    layers = body["results"][0]["layers"]
    assert [layer["name"] for layer in layers] == model.attention_layers
    for layer in layers:
        np.testing.assert_allclose(layer["weights"], expected[layer["name"]][0].numpy(), atol=1e-4)


def test_inspect_shows_inserted_attention(exported: tuple[Path, nn.Module], capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from eca_serve.cli import main

    root, model = exported
    assert main(["inspect", str(root / "tv" / "1"), "--input-size", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["architecture"] == "torchvision:resnet18" and report["attention_layers"] == len(model.attention_layers)
    assert [r["path"] for r in report["inserted_attention"]] == model.attention_layers
    assert report["inserted_attention"][0] == {"path": "layer3.0.conv1.eca", "kind": "eca", "channels": 256,
                                               "k_or_hidden": 5, "params": 5}


def test_profile_before_and_after_surgery(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from eca_serve.cli import main

    args = ["profile", "torchvision:resnet18", "--attention", "both", "--min-channels", "256", "--input-size", "64",
            "--iters", "2", "--json"]
    assert main(args) == 0
    rows = {r["attention"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["none"]["inserted"] == 0 and rows["eca"]["inserted"] == rows["se"]["inserted"] == 10
    assert 0 < rows["eca"]["params_added"] == rows["eca"]["params"] - rows["none"]["params"] < 100  # 10 kernels of 5 or 7
    assert rows["se"]["params_added"] > 1000 * rows["eca"]["params_added"]
    assert rows["se"]["flops_delta_%"] > 0 and all(r["latency_ms"] > 0 for r in rows.values())


def test_train_cli_with_attention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from eca_serve.cli import main
    from eca_serve.data import generate

    generate(tmp_path / "shapes", kind="classify", count=24, seed=0, size=32)
    args = ["train", "classify", "--data", str(tmp_path / "shapes"), "--model", "torchvision:resnet18", "--attention", "se",
            "--min-channels", "512", "--latent-channels", "8", "--input-size", "32", "--epochs", "1", "--batch-size", "8",
            "--warmup-steps", "1", "--workers", "0", "--out", str(tmp_path / "run"), "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["steps"] >= 2
    args[args.index("torchvision:resnet18")] = "eca_resnet18"
    assert main(args) == 2 and "torchvision:<arch>" in capsys.readouterr().err  # refused before any training
