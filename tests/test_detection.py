"""ECA-ResNet-FPN detectors: builders, output format, TorchScript, attention read-out, checkpoints, cost.

Kept fast on 2 CPU cores: narrow ResNet-18 backbones, 32-channel FPN, small heads, 128-192 px inputs.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from eca_serve.errors import CheckpointError, ConfigError
from eca_serve.layers import EcaModule
from eca_serve.models import create_model, get_entry, list_models
from eca_serve.models._categories import coco_categories
from eca_serve.models.arch_detect import detect_detector_architecture
from eca_serve.models.detection import load_backbone_from_classifier
from eca_serve.models.profile import measure
from eca_serve.models.zoo import k_size_from_checkpoint

ARCHS = ("fasterrcnn", "maskrcnn", "retinanet")
NARROW = {"widths": (16, 32, 64, 128), "stem_width": 16}
HEADS = {
    "fasterrcnn": {"box_head_dim": 64},
    "maskrcnn": {"box_head_dim": 64, "mask_head_layers": 2, "mask_head_dim": 16},
    "retinanet": {},
}
PAPER_KERNELS = {
    "fasterrcnn_eca_resnet50_fpn": [5, 5, 5, 5],
    "maskrcnn_eca_resnet50_fpn": [3, 3, 7, 7],
    "retinanet_eca_resnet50_fpn": [3, 3, 7, 7],
    "fasterrcnn_eca_resnet101_fpn": [3, 3, 5, 7],
    "maskrcnn_eca_resnet101_fpn": [3, 3, 5, 7],
    "retinanet_eca_resnet101_fpn": [3, 3, 5, 7],
    "fasterrcnn_eca_resnet18_fpn": [3, 5, 7, 7],
    "maskrcnn_eca_resnet18_fpn": [3, 5, 7, 7],
    "retinanet_eca_resnet18_fpn": [3, 5, 7, 7],
}


def small_kwargs(arch: str, **overrides) -> dict:
    """Smallest config: narrow R18, 32-channel FPN, small heads, 128/192 px, 5 classes, every box kept.

    NOTE: few classes keep torchvision's per-class NMS cheap on CPU (it loops over classes).
    """
    kwargs = {**NARROW, "out_channels": 32, "min_size": 128, "max_size": 192, "score_thresh": 0.0,
              "detections_per_img": 8, "num_classes": 5, **HEADS[arch]}
    kwargs.update(overrides)
    return kwargs


def build_small(arch: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(f"{arch}_eca_resnet18_fpn", **small_kwargs(arch, **overrides))


def images() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(3, 120, 160, generator=gen), torch.rand(3, 176, 130, generator=gen)]


def assert_same_detections(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for da, db in zip(a, b):
        assert sorted(da) == sorted(db)
        for key in da:
            assert torch.equal(da[key], db[key]), key


@pytest.fixture(scope="module")
def small_models() -> dict[str, nn.Module]:
    return {arch: build_small(arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def eager_outputs(small_models) -> dict[str, tuple[list[dict], list[dict], dict]]:
    """arch -> (forward detections, forward_with_attention detections, attention) on `images()`."""
    out = {}
    with torch.no_grad():
        for arch, model in small_models.items():
            out[arch] = (model(images()), *model.forward_with_attention(images()))
    return out


def test_registry_lists_every_detector():
    names = set(list_models(task="detection")) | set(list_models(task="instance_segmentation"))
    for arch in ARCHS:
        for depth in (18, 34, 50, 101):
            assert f"{arch}_eca_resnet{depth}_fpn" in names
    assert get_entry("maskrcnn_eca_resnet50_fpn").task == "instance_segmentation"
    assert get_entry("retinanet_eca_resnet50_fpn").head == "head.classification_head.cls_logits"


@pytest.mark.parametrize("name", sorted(PAPER_KERNELS))
def test_default_kernel_sizes_and_depth(name):
    arch = name.split("_")[0]
    model = create_model(name, widths=(8, 8, 8, 8), stem_width=8, out_channels=8, **HEADS[arch])
    body = model.backbone.body
    stages = [body.layer1, body.layer2, body.layer3, body.layer4]
    assert [{b.eca.k_size for b in stage} for stage in stages] == [{k} for k in PAPER_KERNELS[name]]
    depth = int(name.split("resnet")[1].split("_")[0])
    expected_blocks = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    assert [len(s) for s in stages] == expected_blocks
    assert model.config.extra["k_size"] == PAPER_KERNELS[name]


def test_k_size_override_and_adaptive():
    assert build_small("retinanet", k_size=[3, 3, 3, 5]).config.extra["k_size"] == [3, 3, 3, 5]
    assert build_small("fasterrcnn", k_size=7).config.extra["k_size"] == [7, 7, 7, 7]
    # widths 16..128 -> adaptive rule gives 3 (C=16, 32, 64), 5 (C=128)
    assert build_small("maskrcnn", k_size=None).config.extra["k_size"] == [3, 3, 3, 5]


def test_config_describes_detector():
    cfg = build_small("maskrcnn", num_classes=91).config
    assert (cfg.task, cfg.architecture, cfg.attention) == ("instance_segmentation", "maskrcnn", "eca")
    assert cfg.num_classes == 91
    assert cfg.categories == coco_categories() and cfg.categories[1] == "person"
    pre = cfg.preprocess
    assert (pre.resize, pre.crop, pre.input_size) == (None, False, (128, 128))
    assert (pre.mean, pre.std) == ((0.0,) * 3, (1.0,) * 3)  # normalisation happens inside the model
    assert cfg.extra["min_size"] == 128 and cfg.extra["max_size"] == 192 and cfg.extra["score_thresh"] == 0.0
    cfg5 = build_small("fasterrcnn", num_classes=3).config
    assert cfg5.categories == ("__background__", "class_1", "class_2") and cfg5.task == "detection"
    named = build_small("retinanet", num_classes=3, categories=["bg", "a", "b"])
    assert named.config.categories == ("bg", "a", "b")
    with pytest.raises(ConfigError, match="3 category names for 4 classes"):
        build_small("retinanet", num_classes=4, categories=["bg", "a", "b"])
    with pytest.raises(ConfigError, match="box_head_dim"):
        build_small("retinanet", box_head_dim=32)


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_output_format(arch, eager_outputs):
    detections, _, _ = eager_outputs[arch]
    assert len(detections) == 2
    for det, img in zip(detections, images()):
        h, w = img.shape[-2:]
        n = det["boxes"].shape[0]
        assert 0 < n <= 8
        assert det["boxes"].shape == (n, 4) and det["boxes"].dtype == torch.float32
        assert det["labels"].shape == (n,) and det["labels"].dtype == torch.int64
        assert det["scores"].shape == (n,) and bool(((det["scores"] >= 0) & (det["scores"] <= 1)).all())
        boxes = det["boxes"]
        assert bool((boxes >= 0).all())
        assert bool((boxes[:, 0::2] <= w + 1e-3).all()) and bool((boxes[:, 1::2] <= h + 1e-3).all())
        if arch == "maskrcnn":
            masks = det["masks"]
            assert masks.shape == (n, 1, h, w) and masks.dtype == torch.float32
            assert bool(((masks >= 0) & (masks <= 1)).all())
        else:
            assert "masks" not in det


@pytest.mark.parametrize("arch", ARCHS)
def test_blank_image_and_no_detections(arch, small_models):
    blank = torch.zeros(3, 100, 140)
    with torch.no_grad():
        (kept,) = small_models[arch]([blank])
        (none,) = build_small(arch, score_thresh=1.0)([blank])
    assert kept["boxes"].shape[0] > 0
    assert none["boxes"].shape == (0, 4) and none["labels"].shape == (0,) and none["scores"].shape == (0,)
    if arch == "maskrcnn":
        assert none["masks"].shape == (0, 1, 100, 140)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_with_attention_matches_forward_and_script(arch, small_models, eager_outputs):
    detections, attn_detections, attention = eager_outputs[arch]
    assert_same_detections(detections, attn_detections)
    scripted = torch.jit.script(small_models[arch])
    with torch.no_grad():
        losses, scripted_detections = scripted(images())
        s_detections, s_attention = scripted.forward_with_attention(images())
    assert losses == {}
    assert_same_detections(detections, scripted_detections)
    assert_same_detections(detections, s_detections)
    assert list(s_attention) == list(attention)
    for name in attention:
        assert torch.equal(attention[name], s_attention[name]), name


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_readout_like_classifier(arch, small_models, eager_outputs):
    _, _, attention = eager_outputs[arch]
    classifier = create_model("eca_resnet18", **NARROW)
    assert list(attention) == classifier.attention_layers == small_models[arch].attention_layers
    modules = dict(small_models[arch].backbone.body.named_modules())
    for name, weights in attention.items():
        assert isinstance(modules[name], EcaModule)
        assert weights.shape == (2, modules[name].channels)
        assert bool(((weights > 0) & (weights < 1)).all())


def test_forward_with_attention_is_eval_only():
    model = build_small("retinanet").train()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.forward_with_attention(images())


def _authors_classifier_file(tmp_path: Path, **kwargs) -> tuple[Path, dict[str, torch.Tensor]]:
    """An ECA-ResNet-18 (narrow) with random weights and BN statistics, saved as the authors did."""
    torch.manual_seed(3)
    classifier = create_model("eca_resnet18", **NARROW, **kwargs)
    with torch.no_grad():
        for key, tensor in classifier.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in key else torch.randn_like(tensor))
    state = classifier.state_dict()
    path = tmp_path / "eca_resnet18_narrow.pth.tar"
    obj = {"state_dict": OrderedDict(("module." + k, v) for k, v in state.items()), "epoch": 1, "arch": "x",
           "best_prec1": torch.tensor(1.0)}
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path, state


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_init_from_authors_checkpoint(arch, tmp_path):
    path, state = _authors_classifier_file(tmp_path)
    model = build_small(arch, backbone_weights=path)
    body_state = {k[len("backbone.body."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.body.")}
    expected = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert sorted(body_state) == sorted(expected)
    for key, tensor in expected.items():
        assert torch.equal(body_state[key], tensor), key
    assert load_backbone_from_classifier(model, path) == len(expected)


def test_backbone_init_kernel_mismatch_is_clear(tmp_path):
    path, _ = _authors_classifier_file(tmp_path, k_size=[5, 5, 5, 5])
    with pytest.raises(CheckpointError) as info:
        build_small("maskrcnn", backbone_weights=path)
    message = str(info.value)
    assert "layer1.0.eca.conv.weight: checkpoint [1, 1, 5] vs model [1, 1, 3]" in message
    assert "checkpoint k_size=[5, 5, 5, 5], detector k_size=[3, 5, 7, 7]" in message


def test_backbone_init_wrong_depth_names_keys(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "r34.pth"
    torch.save(create_model("eca_resnet34", **NARROW, k_size=[3, 5, 7, 7]).state_dict(), path)
    with pytest.raises(CheckpointError, match="unexpected key.*layer1.2.conv1.weight"):
        build_small("fasterrcnn", backbone_weights=path)


@pytest.mark.parametrize("arch", ARCHS)
def test_full_detector_checkpoint_roundtrip(arch, tmp_path):
    source = build_small(arch, num_classes=4, k_size=[3, 3, 5, 5])
    path = tmp_path / f"{arch}.pth"
    torch.save(source.state_dict(), path)
    name = f"{arch}_eca_resnet18_fpn"
    arch_kwargs = {k: v for k, v in small_kwargs(arch).items() if k != "num_classes"}
    loaded = create_model(name, weights=path, **arch_kwargs)  # num_classes, k_size read from the file
    assert loaded.config.num_classes == 4 and loaded.config.extra["k_size"] == [3, 3, 5, 5]
    with torch.no_grad():
        assert_same_detections(source(images()[:1]), loaded(images()[:1]))
    detected = detect_detector_architecture(source.state_dict())
    assert detected is not None
    detected_name, kwargs = detected
    assert detected_name == name and kwargs["num_classes"] == 4 and kwargs["k_size"] == [3, 3, 5, 5]
    assert kwargs["widths"] == NARROW["widths"] and kwargs["out_channels"] == 32
    rebuilt = create_model(detected_name, weights=path, **kwargs)
    assert rebuilt.config.extra["frozen_bn"] is True
    with pytest.raises(CheckpointError, match="does not match"):
        create_model(name, weights=path, **{**arch_kwargs, "out_channels": 16})


def test_detect_architecture_ignores_classifiers():
    assert detect_detector_architecture(create_model("eca_resnet18", **NARROW).state_dict()) is None


def test_k_size_from_checkpoint_handles_detector_prefix():
    kernels = {f"backbone.body.layer{s}.{b}.eca": k for s, k in zip(range(1, 5), (3, 5, 7, 7)) for b in range(2)}
    assert k_size_from_checkpoint("maskrcnn_eca_resnet18_fpn", kernels) == [3, 5, 7, 7]
    kernels["backbone.body.layer2.1.eca"] = 3
    with pytest.raises(ConfigError, match="layer2"):
        k_size_from_checkpoint("maskrcnn_eca_resnet18_fpn", kernels)


@pytest.mark.parametrize("trainable", [0, 3, 5])
def test_frozen_stages_and_frozen_bn(trainable):
    body = build_small("fasterrcnn", trainable_layers=trainable).backbone.body
    trainable_prefixes = ("layer4", "layer3", "layer2", "layer1", "conv1")[:trainable]
    for name, param in body.named_parameters():
        assert param.requires_grad == name.startswith(trainable_prefixes), name
    norms = [m for m in body.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    if trainable == 3:
        assert not body.conv1.weight.requires_grad and not body.layer1[0].eca.conv.weight.requires_grad
        assert body.layer2[0].conv1.weight.requires_grad


def test_trainable_bn_option_and_bad_trainable_layers():
    body = build_small("maskrcnn", frozen_bn=False, trainable_layers=5).backbone.body
    assert isinstance(body.bn1, nn.BatchNorm2d) and body.conv1.weight.requires_grad
    with pytest.raises(ConfigError, match="trainable_layers"):
        build_small("maskrcnn", trainable_layers=6)


@pytest.mark.parametrize("arch", ARCHS)
def test_measure_detector(arch, small_models):
    model = small_models[arch]
    cost = measure(model, (128, 128))
    assert cost.params > 0 and cost.macs > 0 and cost.input_size == (128, 128)
    assert cost.attention_params > 0
    # counted at the stated size (the model's transform does not resize it), then restored
    assert measure(model, (96, 96)).macs < cost.macs
    assert model.transform.min_size == (128,) and model.transform.max_size == 192
