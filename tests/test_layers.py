"""ECA and SE blocks against the paper's definitions."""

import pytest
import torch
from torch import nn

from eca_serve.errors import ConfigError
from eca_serve.layers import EcaModule, SEModule, attention_names, create_attn, eca_kernel_size


@pytest.mark.parametrize("channels, expected", [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7), (16, 3), (320, 5)])
def test_kernel_size_rule_matches_paper(channels: int, expected: int) -> None:
    assert eca_kernel_size(channels) == expected


def official_eca(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """The authors' eca_layer.forward, restated: pool, squeeze/transpose, conv, transpose back, expand_as."""
    y = nn.functional.adaptive_avg_pool2d(x, 1)
    y = conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
    return x * torch.sigmoid(y).expand_as(x)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_eca_equals_official_computation(k: int) -> None:
    torch.manual_seed(k)
    eca = EcaModule(32, k)
    x = torch.randn(3, 32, 5, 7)
    torch.testing.assert_close(eca(x), official_eca(x, eca.conv), rtol=1e-6, atol=1e-6)
    out, weights = eca.forward_with_weights(x)
    assert weights.shape == (3, 32) and bool(((weights > 0) & (weights < 1)).all())
    torch.testing.assert_close(out, eca(x))


def test_eca_has_one_bias_free_tensor_with_zero_padding() -> None:
    eca = EcaModule(64, 5)
    assert list(eca.state_dict()) == ["conv.weight"]
    assert eca.conv.weight.shape == (1, 1, 5) and eca.conv.bias is None
    assert eca.conv.padding == (2,) and eca.conv.padding_mode == "zeros"
    assert EcaModule(2048).k_size == 7


@pytest.mark.parametrize("k", [0, 2, -1])
def test_eca_rejects_even_or_nonpositive_kernels(k: int) -> None:
    with pytest.raises(ConfigError, match="odd"):
        EcaModule(64, k)


def test_se_block_reduction_and_weights() -> None:
    se = SEModule(64, reduction=16)
    assert se.fc1.out_channels == 4 and se.fc2.out_channels == 64
    x = torch.randn(2, 64, 4, 4)
    out, w = se.forward_with_weights(x)
    assert w.shape == (2, 64)
    torch.testing.assert_close(out, x * w[:, :, None, None])


def test_factory_selects_by_name_and_names_choices_on_error() -> None:
    assert isinstance(create_attn("eca", 64), EcaModule)
    assert isinstance(create_attn("se", 64), SEModule)
    assert create_attn(None, 64) is None
    assert attention_names() == ["eca", "se"]
    with pytest.raises(ConfigError, match=r"\['eca', 'se'\]"):
        create_attn("cbam", 64)


def test_eca_exports_without_expand_as() -> None:
    eca = EcaModule(16, 3)
    scripted = torch.jit.script(eca)
    assert "expand_as" not in scripted.code
    x = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(scripted(x), eca(x))
