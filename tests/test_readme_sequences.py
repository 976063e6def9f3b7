"""The README's multi-step workflows, run as written at a small size: train, profile, quantize, admin, the zoo CLI.

Each block's commands run in order in a scratch folder holding ``examples/`` and a copy of the shipped
``models/``. The only edits are listed per block and each must apply (a README change that drops one fails
here): placeholders become real files (``data/calib``), and sizes shrink (``--count 6000`` -> 64, one
epoch) so the whole file runs in a few minutes. Lines that cannot run name their reason in `NOT_RUN`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.readme_blocks import ROOT, Block, blocks_of
from tests.serving_utils import free_port
from tests.test_readme_examples import run_shell

SHAPES = ["circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ellipse"]
NOT_RUN = {
    "eca-serve export eca_resnet50": "needs a user's ECA-ResNet-50 checkpoint; the workflow below exports what it trains",
    "eca-serve import-official": "needs the authors' 98 MB ImageNet file; tests/test_authors_logits.py reads their format",
    "eca-serve train detect": "minutes of detector training; tests/test_training.py and test_surgery_detector.py train detectors",
    "python bench/": "benchmarks print numbers and take minutes",
    "pytest -m slow": "the long soak is its own run",
    "eca-serve quantize my_detector": "detector calibration and COCO evaluation take minutes; tests/test_quantize_detector.py",
    "eca-serve inspect eca_resnet50_k3557.pth.tar": "needs the authors' 98 MB ImageNet file",
}


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A folder with ``examples`` (linked) and a writable copy of the shipped ``models``."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    shutil.copytree(ROOT / "models", tmp_path / "models")
    return tmp_path


def run_block(block: Block, cwd: Path, edits: dict[str, str], timeout_s: float = 300) -> list[str]:
    """Runs the block's commands in ``cwd`` after ``edits`` (old -> new, each must apply); their stdout."""
    unused = dict(edits)
    outputs = []
    for command in block.commands():
        reason = next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)
        if reason is not None:
            print(f"not run: {command}: {reason}")
            continue
        for old, new in edits.items():
            if old in command:
                command = command.replace(old, new)
                unused.pop(old, None)
        result = run_shell(command, cwd, timeout_s)
        assert result.returncode == 0, (command, result.stdout[-1500:], result.stderr[-3000:])
        outputs.append(result.stdout)
    assert not unused, f"edits that no longer match the README: {sorted(unused)}"
    return outputs


def test_workflow_data_train_export_serve(scratch: Path) -> None:
    (block,) = blocks_of("workflow")
    run_block(block, scratch, {"--count 6000": "--count 64",
                               "--input-size 64 --export-to": "--input-size 64 --epochs 1 --batch-size 16 --workers 0 "
                                                             "--warmup-steps 1 --export-to"})
    result = run_shell("eca-serve predict examples/star.png --model x --top-k 3", scratch)
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((scratch / "models" / "x" / "1" / "config.json").read_text())
    assert [c.split("_", 1)[-1] for c in config["categories"]] == SHAPES


def test_profile_recommends_and_writes_a_serving_block(scratch: Path) -> None:
    (block,) = blocks_of("profile")
    before = json.loads((scratch / "models" / "shapes_classifier" / "1" / "config.json").read_text())
    fast = " --seconds 0.2 --batch-sizes 1,2 --instance-counts 1"
    outputs = run_block(block, scratch, {"--recommend --model-repository models": "--recommend --model-repository models" + fast,
                                         "--recommend --write": "--recommend --write" + fast})
    assert all("max_batch_size" in out for out in outputs), outputs
    after = json.loads((scratch / "models" / "shapes_classifier" / "1" / "config.json").read_text())
    assert after["serving"]["max_batch_size"] in (1, 2) and after["serving"] != before.get("serving")
    assert {k: v for k, v in after.items() if k != "serving"} == {k: v for k, v in before.items() if k != "serving"}


def test_quantize_sequence(scratch: Path) -> None:
    """FP32 -> INT8 version of a one-version copy of the shipped classifier, its report, its serving block."""
    (block,) = blocks_of("quantize")
    repository = scratch / "models"
    shutil.rmtree(repository / "shapes_detector")
    shutil.rmtree(repository / "shapes_classifier" / "2")
    for folder, count, seed in (("calib", 32, 21), ("held_out", 96, 22)):
        made = run_shell(f"eca-serve data shapes --kind classify --out data/{folder} --count {count} --seed {seed}", scratch)
        assert made.returncode == 0, made.stderr[-2000:]
    outputs = run_block(block, scratch, {"my_model": "shapes_classifier",
                                         "--rounds 3 --write": "--rounds 1 --seconds 0.2 --batch-sizes 1,4 "
                                                               "--instance-counts 1 --write",
                                         "--eval data/held_out": "--eval data/held_out --max-drop 3"})
    report = json.loads((repository / "shapes_classifier" / "2" / "quantization.json").read_text())
    assert (repository / "shapes_classifier" / "2" / "model.onnx").is_file()
    assert "top1" in json.dumps(report) or "top_1" in json.dumps(report), sorted(report)
    assert "shapes_classifier" in outputs[1]
    assert "serving" in json.loads((repository / "shapes_classifier" / "2" / "config.json").read_text())


def test_zoo_cli(scratch: Path) -> None:
    (block,) = blocks_of("zoo-cli")
    listing, profile = run_block(block, scratch, {"eca-serve profile eca_resnet50": "eca-serve profile eca_resnet50 --iters 1"})
    assert "eca_resnet50" in listing and "eca_mobilenet_v2" in listing
    assert "25557112" in profile and "3.808" in profile, profile[-1500:]  # the table row: params, FLOPs


def test_admin_unload_load_as_pasted(scratch: Path) -> None:
    """The block as a script: each curl's exit status and HTTP status are logged by a ``curl`` shell function."""
    (block,) = blocks_of("admin")
    port = free_port()
    script = "\n".join([
        "curl() { command curl -w '\\n__status__ %{http_code}\\n' \"$@\"; local rc=$?; echo \"__exit__ $rc $*\"; return $rc; }",
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",
        f"export ECA_SERVE_PORT={port} ECA_SERVE_GRPC_PORT=0",
        block.code.replace("localhost:8000", f"127.0.0.1:{port}"),
    ])
    result = run_shell(script, scratch, timeout_s=180)
    calls = [line.split(" ", 2) for line in result.stdout.splitlines() if line.startswith("__exit__")]
    admin = [c for c in calls if "/v2/repository/models/" in c[2]]
    assert [c[2].rsplit("/", 1)[1] for c in admin] == ["unload", "load"], result.stdout[-2000:]
    assert all(c[1] == "0" for c in admin), result.stdout[-2000:]
    statuses = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("__status__")]
    assert statuses[-2:] == ["200", "200"], result.stdout[-2000:]


def test_drift_block_as_pasted(scratch: Path) -> None:
    """The drift block as a script (its own server with every batch summarised): a score after its 100 requests."""
    (block,) = blocks_of("drift")
    port = free_port()
    script = "\n".join([
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",
        f"export ECA_SERVE_PORT={port} ECA_SERVE_GRPC_PORT=0",
        block.code.replace("localhost:8000", f"127.0.0.1:{port}"),
    ])
    result = run_shell(script, scratch, timeout_s=300)
    start = result.stdout.find('{"model"')  # after the readiness loop's own answer, on the same line
    assert start >= 0, result.stdout[-2000:] + result.stderr[-2000:]
    answer, _ = json.JSONDecoder().raw_decode(result.stdout, start)
    shown = block.code.split("# ", 1)[1]
    for key in re.findall(r'"(\w+)":', shown):
        assert key in answer or any(key in layer for layer in answer["layers"]), key
    assert answer["version"] == 2 and answer["score"] is not None and answer["images_seen"] == 100
    assert answer["layers"][0]["name"] == "layer1.0.eca"


def test_attention_stats_block(scratch: Path) -> None:
    (block,) = blocks_of("attention-stats")
    outputs = run_block(block, scratch, {"--count 800": "--count 48"})
    summary = json.loads(outputs[1])
    shown = json.loads(block.steps()[1][1][0])
    assert set(summary) == set(shown) and (summary["classes"], summary["layers"]) == (shown["classes"], shown["layers"])
    assert (scratch / summary["png"]).read_bytes().startswith(b"\x89PNG")
    stats = json.loads((scratch / summary["json"]).read_text())
    assert len(stats["mean"]) == 8 and len(stats["mean"][0]) == 8
