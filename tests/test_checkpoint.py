"""Loading the authors' released-checkpoint format, plain state dicts and safetensors, strictly and safely."""

import os
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import save_file

import eca_serve
from eca_serve.errors import CheckpointError, ConfigError
from eca_serve.models import load_checkpoint, read_checkpoint
from eca_serve.models.arch_detect import detect_architecture
from tests.conftest import REFERENCE_ARCHS, load_reference, random_state_dict, save_authors_format


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_authors_checkpoint_loads_strictly_and_round_trips(arch: str, authors_checkpoints) -> None:
    path, written = authors_checkpoints[arch]
    model = eca_serve.create_model(arch, weights=path)
    loaded = model.state_dict()
    assert list(loaded) == list(written)
    for key, tensor in written.items():
        assert torch.equal(loaded[key], tensor), key
    assert model.config.extra["k_size"] == load_reference(arch)["k_size"]


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_architecture_is_detected_from_tensors_not_the_arch_field(arch: str, authors_checkpoints) -> None:
    path, _ = authors_checkpoints[arch]
    ckpt = read_checkpoint(path)
    assert ckpt.meta["arch"] == "se_resnet50"  # the file lies, as the released R50 does
    assert detect_architecture(ckpt.state_dict) == (arch, {})


def test_code_default_kernels_fail_with_named_mismatches(authors_checkpoints) -> None:
    path, _ = authors_checkpoints["eca_resnet50"]
    with pytest.raises(CheckpointError) as err:
        eca_serve.create_model("eca_resnet50", weights=path, k_size=[3, 3, 3, 3])
    message = str(err.value)
    assert "layer2.0.eca.conv.weight: checkpoint [1, 1, 5] vs model [1, 1, 3]" in message
    assert "layer4.2.eca.conv.weight" in message or "shape mismatch" in message
    with pytest.raises(CheckpointError, match="layer4.0.eca.conv.weight"):
        load_checkpoint(eca_serve.create_model("eca_resnet50", k_size=[3, 3, 3, 3]), path)


def test_mobilenet_old_le_96_rule_fails_on_blocks_11_to_13(authors_checkpoints) -> None:
    path, _ = authors_checkpoints["eca_mobilenet_v2"]
    old_rule = [1 if c <= 96 else 3 for c, n in ((16, 1), (24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1)) for _ in range(n)]
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(eca_serve.create_model("eca_mobilenet_v2", k_size=old_rule), path)
    message = str(err.value)
    assert "3 shape mismatch" in message
    for block in (11, 12, 13):
        assert f"features.{block}.conv.4.conv.weight: checkpoint [1, 1, 3] vs model [1, 1, 1]" in message


def test_missing_num_batches_tracked_is_accepted(tmp_path: Path) -> None:
    state = random_state_dict(load_reference("eca_resnet18"))
    trimmed = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = save_authors_format(trimmed, tmp_path / "old.pth.tar")
    model = eca_serve.create_model("eca_resnet18", weights=path)
    assert torch.equal(model.state_dict()["layer1.0.bn1.running_var"], state["layer1.0.bn1.running_var"])


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state = random_state_dict(load_reference("eca_resnet18"))
    del state["layer3.1.bn2.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing key\(s\): layer3.1.bn2.weight.*unexpected key\(s\): layer5.0.conv1.weight"):
        eca_serve.create_model("eca_resnet18", weights=path)


def test_tensors_saved_from_cuda_load_on_cpu(tmp_path: Path) -> None:
    state = random_state_dict(load_reference("eca_resnet18"))
    with mock.patch("torch.serialization.location_tag", return_value="cuda:0"):
        path = save_authors_format(state, tmp_path / "cuda.pth.tar")
    assert b"cuda:0" in path.read_bytes()[:100_000]
    model = eca_serve.create_model("eca_resnet18", weights=path)
    assert next(model.parameters()).device.type == "cpu"
    assert torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])


def test_plain_state_dict_and_safetensors_load(tmp_path: Path) -> None:
    source = eca_serve.create_model("eca_resnet18", num_classes=7)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    tensors = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"config": '{"categories": ["a","b","c","d","e","f","g"]}'})
    for name in ("plain.pt", "w.safetensors"):
        model = eca_serve.create_model("eca_resnet18", weights=tmp_path / name)
        assert model.config.num_classes == 7
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    assert eca_serve.create_model("eca_resnet18", weights=tmp_path / "w.safetensors").config.categories[:2] == ("a", "b")


def test_conflicting_num_classes_raises(tmp_path: Path) -> None:
    torch.save(eca_serve.create_model("eca_resnet18", num_classes=7).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="num_classes=10 conflicts with the checkpoint's 7"):
        eca_serve.create_model("eca_resnet18", weights=tmp_path / "w.pt", num_classes=10)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/eca_serve_pwned",))


def test_pickle_payload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "x": _Payload()}, f)
    marker = Path("/tmp/eca_serve_pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="weights-only"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_garbage_files_give_checkpoint_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pth"):
        read_checkpoint(path)


def test_non_tensor_entries_are_rejected(tmp_path: Path) -> None:
    torch.save({"state_dict": {"fc.weight": torch.zeros(1), "note": "hello"}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="'note' is a str"):
        read_checkpoint(tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "absent.pth")
