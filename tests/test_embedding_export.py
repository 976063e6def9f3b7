"""Pooled features (the ``embedding`` output): every classifier family in eager and TorchScript, the exported
graph through every backend, and the shipped entries."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import eca_serve
from eca_serve.export import ExportOptions, export_model
from eca_serve.models import PreprocessConfig, get_entry
from eca_serve.repository import read_config
from eca_serve.runtime import BackendOptions, create_backend
from eca_serve.runtime.torch_backend import TorchClassifier
from tests.seeded_weights import seeded_state
from tests.test_families import small_model as tamed_family_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "shapes_classifier"
NARROW = {"widths": [16, 32, 64, 128], "stem_width": 16}


def seeded(name: str, **kwargs) -> nn.Module:
    """A seeded random classifier with a 64 px input: the zoo's with the shared weight recipe (MobileNetV2's
    default initialisation pools to ~1e-10), ResNeSt and DGC tamed as in test_families."""
    if name in ("resnest50", "dgc_resnet18"):
        return tamed_family_model(name)
    torch.manual_seed(0)
    model = eca_serve.create_model(name, num_classes=5, **kwargs)
    if not name.startswith("torchvision:"):
        model.load_state_dict(seeded_state(model.state_dict(), gain=2.0 if "mobilenet" in name else 1.0))
    model.config = model.config.replace(preprocess=PreprocessConfig(input_size=(64, 64), resize=64))
    return model.eval()


FAMILIES = {
    "eca_resnet18": NARROW, "se_resnet18": NARROW, "resnet18": NARROW, "eca_mobilenet_v2": {},
    "resnest50": {}, "dgc_resnet18": {},
    "torchvision:resnet18": {"surgery": {"kind": "eca", "min_channels": 256}},
    "torchvision:mobilenet_v3_small": {"surgery": {"kind": "se", "min_channels": 96}},  # head inside `classifier`
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_embedding_is_the_input_of_the_final_layer_in_eager_and_torchscript(name: str) -> None:
    model = seeded(name, **FAMILIES[name])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    seen: list[torch.Tensor] = []
    hook = model.get_submodule(get_entry(model.config.name).head).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        logits = model(x)
    hook.remove()
    with torch.no_grad():
        got_logits, embedding, attention = model.forward_with_embedding(x)
        plain_logits, plain_attention = model.forward_with_attention(x)
        scripted = torch.jit.script(copy.deepcopy(model)).forward_with_embedding(x)
    assert embedding.dtype == torch.float32 and embedding.shape == seen[0].flatten(1).shape
    assert embedding.shape[0] == 2 and embedding.shape[1] > 8
    assert torch.equal(embedding, seen[0].flatten(1))
    assert torch.equal(got_logits, logits) and torch.equal(plain_logits, logits)
    assert list(attention) == list(plain_attention) == list(model.attention_layers)
    torch.testing.assert_close(scripted[1], embedding, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scripted[0], logits, atol=1e-5, rtol=1e-5)


# NOTE: not ResNeSt: its ONNX Runtime kernels differ from eager by up to 2e-4 on features of magnitude 3.6
# (the export's parity check allows 1e-4 relative to that magnitude)
@pytest.mark.parametrize("name", ["eca_resnet18", "eca_mobilenet_v2", "se_resnet18", "dgc_resnet18"])
def test_onnxruntime_embedding_matches_eager(name: str, tmp_path: Path) -> None:
    model = seeded(name, **FAMILIES[name])
    config = export_model(model, tmp_path / name / "1", ExportOptions(name=name, formats=("onnx",), check_inputs=[(1, 64, 64)]))
    x = np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        _, expected, _ = model.forward_with_embedding(torch.from_numpy(x))
    got = create_backend(tmp_path / name / "1", config, BackendOptions("onnxruntime", threads=1)).infer(x)
    assert config.embedding is not None and config.outputs[-1].name == "embedding"
    assert config.outputs[-1].shape == [-1, config.embedding.dim] and got["embedding"].shape == (3, config.embedding.dim)
    assert np.abs(got["embedding"] - expected.numpy()).max() <= 1e-4
    assert np.abs(got["embedding"]).max() > 0.1  # not a vector of (near) zeros
    assert all(row["max_abs_embedding"] is not None for row in config.parity["rows"])


def test_every_backend_returns_the_embedding_of_every_row(tmp_path: Path) -> None:
    model = seeded("eca_resnet18", **NARROW)
    folder = tmp_path / "m" / "1"
    config = export_model(model, folder, ExportOptions(name="m", check_inputs=[(1, 64, 64)]))
    x = np.random.default_rng(3).standard_normal((4, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model.forward_with_embedding(torch.from_numpy(x))[1].numpy()
    kinds = ["onnxruntime", "torchscript", "eager"]
    try:
        import openvino  # noqa: F401
        kinds.append("openvino")
    except ImportError:
        pass
    for kind in kinds:
        got = create_backend(folder, config, BackendOptions(kind, threads=1)).infer(x)
        assert got["embedding"].shape == (4, 128) and got["embedding"].dtype == np.float32, kind
        assert np.abs(got["embedding"] - expected).max() <= 1e-4, kind
        assert set(got) == {o.name for o in config.outputs}, kind


class _BeforeEmbeddings(nn.Module):
    """A classifier whose TorchScript has only ``forward_with_attention`` (a ``model.pt`` exported before issue 24)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))

    @torch.jit.export
    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.forward(x), {"gate": torch.sigmoid(x.mean(dim=(2, 3)))}


def test_torchscript_exported_before_the_embedding_still_serves_logits_and_attention() -> None:
    scripted = torch.jit.freeze(torch.jit.script(_BeforeEmbeddings().eval()), preserved_attrs=["forward_with_attention"])
    got = TorchClassifier(scripted, BackendOptions("torchscript"), "old").infer(np.ones((2, 3, 4, 4), np.float32))
    assert sorted(got) == ["attention/gate", "logits"] and got["logits"].shape == (2, 2)


@pytest.mark.parametrize("version", ["1", "2"], ids=["fp32", "int8"])
def test_shipped_entries_expose_the_embedding_through_onnxruntime_and_openvino(version: str) -> None:
    pytest.importorskip("openvino")
    from tests.test_openvino import shapes_batch

    config = read_config(SHIPPED / version)
    assert config.embedding is not None and config.embedding.dim == 128
    assert [o for o in config.outputs if o.name == "embedding"][0].shape == [-1, 128]
    batch = shapes_batch(config)
    ort, ov = (create_backend(SHIPPED / version, config, BackendOptions(kind, threads=1)).infer(batch)
               for kind in ("onnxruntime", "openvino"))
    for out in (ort, ov):
        assert out["embedding"].shape == (len(batch), 128) and out["embedding"].dtype == np.float32
    limit = 1e-4 if config.precision == "fp32" else 0.05
    scale = np.abs(ort["embedding"]).max()
    assert np.abs(ort["embedding"] - ov["embedding"]).max() <= limit * max(1.0, scale)


def test_int8_embedding_points_where_the_fp32_one_does() -> None:
    from tests.test_openvino import shapes_batch

    fp32, int8 = (read_config(SHIPPED / v) for v in ("1", "2"))
    batch = shapes_batch(fp32)
    a, b = (create_backend(SHIPPED / v, c, BackendOptions("onnxruntime", threads=1)).infer(batch)["embedding"]
            for v, c in (("1", fp32), ("2", int8)))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99, cosine
