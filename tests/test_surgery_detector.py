"""Surgery on a torchvision detector's backbone body: gates, identity at init, train, export, serve."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from eca_serve.models import create_model
from eca_serve.models.surgery import SurgicalEca

SMALL = dict(min_size=64, max_size=64, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
             rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, box_batch_size_per_image=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_resnet50_detector_backbone_surgery_is_identity_at_init() -> None:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    plain = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64,
                                    rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20).eval()
    model = create_model("torchvision:fasterrcnn_resnet50_fpn", num_classes=3, surgery={"kind": "eca", "min_channels": 1024},
                         **{k: v for k, v in SMALL.items() if "test" in k or "size" in k})
    # counted on torchvision's own model: stage 3's six conv3 + downsample (1024), stage 4's three + downsample (2048)
    expected = [p for p, m in plain.backbone.body.named_modules() if isinstance(m, nn.Conv2d) and m.out_channels >= 1024]
    assert len(expected) == 11
    assert model.attention_layers == [f"{p}.eca" for p in expected]
    assert model.config.extra["surgery"]["root"] == "backbone.body"
    assert model.config.extra["surgery"]["targets"] == [f"backbone.body.{p}" for p in expected]
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".eca." in k for k in missing) and len(missing) == 11
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        reference, got = plain(images), model(images)
        features, weights = model.backbone.forward_with_attention(torch.rand(2, 3, 64, 64))
    for key in ("boxes", "labels", "scores"):
        torch.testing.assert_close(got[0][key], reference[0][key], atol=1e-5, rtol=1e-4)
    assert set(features) == {"0", "1", "2", "3", "pool"} and [w.shape[1] for w in weights] == [1024] * 7 + [2048] * 4
    assert all(torch.allclose(w, torch.full_like(w, 0.5)) for w in weights)  # zero kernel: gate 2 * 0.5 = 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """``train detect --attention eca`` on a few Shapes scenes, exported into a model repository."""
    from eca_serve.cli import main
    from eca_serve.data import generate

    tmp = tmp_path_factory.mktemp("det_surgery")
    generate(tmp / "data", kind="detect", count=12, seed=0, size=64)
    args = ["train", "detect", "--images", str(tmp / "data" / "images"), "--annotations", str(tmp / "data" / "annotations.json"),
            "--model", "torchvision:maskrcnn_resnet18_fpn", "--attention", "eca", "--min-channels", "256",
            *[a for k, v in {**SMALL, "box_head_dim": 64, "detections_per_img": 20, "score_thresh": 0.0}.items()
              for a in ("--arg", f"{k}={v}")],
            "--epochs", "1", "--batch-size", "2", "--lr", "0.01", "--warmup-steps", "1", "--workers", "0",
            "--out", str(tmp / "run"), "--export-to", str(tmp / "models" / "det" / "1"), "--json"]
    assert main(args) == 0
    model = create_model("torchvision:maskrcnn_resnet18_fpn", weights=tmp / "models" / "det" / "1" / "weights.safetensors")
    return tmp / "models", model


def test_trained_entry_records_spec_and_passes_parity(trained: tuple[Path, nn.Module]) -> None:
    from eca_serve.repository import read_config

    root, model = trained
    config = read_config(root / "det" / "1")
    assert config.parity["passed"] and config.architecture == "torchvision:maskrcnn_resnet18_fpn"
    assert {r["backend"] for r in config.parity["rows"]} >= {"onnxruntime"}
    spec = config.build_kwargs["surgery"]
    # resnet18 convolutions with >= 256 outputs: stage 3 (conv1, conv2 x 2 blocks, downsample) and stage 4
    assert spec["root"] == "backbone.body" and len(spec["targets"]) == 10 and spec["kind"] == "eca"
    assert [a.name for a in config.attention] == model.attention_layers and config.attention[0].name == "layer3.0.conv1.eca"
    assert config.attention[0].output == "attention/layer3.0.conv1.eca" and {a.kind for a in config.attention} == {"eca"}
    gates = [m for m in model.modules() if isinstance(m, SurgicalEca)]
    assert len(gates) == 10 and any(g.conv.weight.abs().sum() > 0 for g in gates)  # training moved the kernels


def test_onnx_detector_matches_eager_with_attention(trained: tuple[Path, nn.Module]) -> None:
    import onnxruntime as ort

    root, model = trained
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(root / "det" / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["boxes", "labels", "scores", "masks"] + [f"attention/{n}" for n in model.attention_layers]
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5))
    values = dict(zip(names, session.run(None, {"input": image.numpy()})))
    with torch.no_grad():
        _, attention = model.forward_with_attention([image])
    for name, weights in attention.items():
        np.testing.assert_allclose(values[f"attention/{name}"], weights.numpy(), atol=1e-5)
        assert weights.std() > 0  # trained gates: not the constant 0.5 of initialisation


def test_served_detector_returns_inserted_attention(trained: tuple[Path, nn.Module]) -> None:
    from eca_serve.settings import Settings
    from tests.hostile_images import png_bytes
    from tests.serving_utils import running_server

    root, model = trained
    data = png_bytes((64, 64), seed=3)
    with running_server(Settings(model_repository=root)) as (base, _):
        response = httpx.post(f"{base}/v1/models/det/attention?score_threshold=0", content=data,
                              headers={"content-type": "image/png"}, timeout=120)
        info = httpx.get(f"{base}/v1/models/det", timeout=60).json()
    assert response.status_code == 200, response.text
    layers = response.json()["results"][0]["layers"]
    assert [layer["name"] for layer in layers] == model.attention_layers
    assert all(len(layer["weights"]) == (256 if layer["name"].startswith("layer3") else 512) for layer in layers)
    from PIL import Image
    import io

    image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    with torch.no_grad():
        _, expected = model.forward_with_attention([image])
    for layer in layers:
        np.testing.assert_allclose(layer["weights"], expected[layer["name"]][0].numpy(), atol=1e-4)
    assert json.dumps(info)  # the entry is listed and described
