"""The classifier zoo: layouts equal the authors' models, attention read-out, registry behaviour."""

import pytest
import torch

import eca_serve
from eca_serve.errors import ConfigError, UnknownModelError
from eca_serve.introspect import AttentionOutputs, attention_layers
from eca_serve.models import get_entry, register_model
from eca_serve.models.profile import count_params
from tests.conftest import REFERENCE_ARCHS, load_reference

EXPECTED_LAYERS = {"eca_resnet18": 8, "eca_resnet34": 16, "eca_resnet50": 16, "eca_resnet101": 33,
                   "eca_resnet152": 50, "eca_mobilenet_v2": 17}


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_state_dict_layout_equals_reference(arch: str) -> None:
    ref = load_reference(arch)
    model = eca_serve.create_model(arch)
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [(k, s) for k, s in ref["keys"]]
    params, eca_params = count_params(model)
    assert (params, eca_params) == (ref["params"], ref["eca_params"])
    assert [(layer.name, layer.k_size) for layer in attention_layers(model)] == [tuple(e) for e in ref["eca_modules"]]


def test_released_kernel_sizes_are_defaults() -> None:
    assert eca_serve.create_model("eca_resnet50").config.extra["k_size"] == [3, 5, 5, 7]
    assert eca_serve.create_model("eca_resnet18").config.extra["k_size"] == [3, 5, 7, 7]
    adaptive = eca_serve.create_model("eca_resnet50", k_size=None)
    assert adaptive.config.extra["k_size"] == [5, 5, 5, 7]  # the paper's rule on 256/512/1024/2048 channels


def test_plain_and_se_comparators_share_the_resnet_code() -> None:
    plain = eca_serve.create_model("resnet50")
    se = eca_serve.create_model("se_resnet50")
    assert count_params(plain)[0] == 25_557_032  # torchvision's ResNet-50
    assert attention_layers(plain) == [] and len(attention_layers(se)) == 16
    assert "layer1.0.se.fc1.weight" in se.state_dict()
    with pytest.raises(ConfigError, match="no ECA"):
        eca_serve.create_model("resnet18", k_size=3)


@pytest.mark.parametrize("arch", ["eca_resnet18", "eca_resnet50", "eca_mobilenet_v2", "se_resnet18"])
def test_forward_with_attention_matches_forward_and_scripts(arch: str) -> None:
    torch.manual_seed(0)
    model = eca_serve.create_model(arch, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, weights = model.forward_with_attention(x)
        assert torch.equal(logits, model(x))
        scripted = torch.jit.script(model)
        s_logits, s_weights = scripted.forward_with_attention(x)
    torch.testing.assert_close(s_logits, logits)
    assert list(weights) == list(s_weights) == model.attention_layers
    expected = EXPECTED_LAYERS.get(arch, 8)
    assert len(weights) == expected
    for layer in attention_layers(model):
        w = weights[layer.name]
        assert w.shape == (2, layer.channels)
        assert bool(((w > 0) & (w < 1)).all())
        torch.testing.assert_close(s_weights[layer.name], w)


def test_attention_layer_counts_of_reference_models() -> None:
    for arch in ("eca_resnet50", "eca_mobilenet_v2"):
        model = eca_serve.create_model(arch)
        assert len(model.attention_layers) == EXPECTED_LAYERS[arch]


def test_attention_outputs_wrapper_orders_tensors_by_name() -> None:
    model = eca_serve.create_model("eca_resnet18", num_classes=5)
    wrapped = AttentionOutputs(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = wrapped(x)
        logits, weights = model.forward_with_attention(x)
        embedding = torch.flatten(model.avgpool(model.forward_features(x)), 1)
    assert len(outs) == 1 + 8 + 1
    assert torch.equal(outs[0], logits)
    assert all(torch.equal(o, weights[n]) for o, n in zip(outs[1:-1], wrapped.names))
    assert outs[-1].shape == (1, 512) and torch.equal(outs[-1], embedding)


def test_config_carries_preprocessing_and_imagenet_names() -> None:
    cfg = eca_serve.create_model("eca_mobilenet_v2").config
    assert cfg.preprocess.resize == 256 and cfg.preprocess.input_size == (224, 224)
    assert cfg.preprocess.mean == (0.485, 0.456, 0.406) and cfg.preprocess.std == (0.229, 0.224, 0.225)
    assert len(cfg.categories) == 1000 and cfg.categories[0] == "tench"
    with pytest.raises(AttributeError):
        cfg.num_classes = 3  # frozen
    assert eca_serve.create_model("eca_resnet18", num_classes=3).config.categories == ("class_0", "class_1", "class_2")


def test_registry_errors() -> None:
    with pytest.raises(UnknownModelError, match="eca_resnet50"):
        eca_serve.create_model("eca_resnet5")
    with pytest.raises(ConfigError, match="already registered"):
        register_model(task="classification", head="fc", attention=None)(get_entry("resnet18").builder)
    assert "eca_resnet50" in eca_serve.list_models(attention="eca")
    assert "resnet50" not in eca_serve.list_models(attention="eca")
