"""Serving policy per model (config.json ``serving``), ``profile --recommend``, and readiness after a worker crash."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from eca_serve.api import routes_v2
from eca_serve.api.errors import status_of
from eca_serve.api.metrics import ServerMetrics
from eca_serve.api.v2_models import repository_index
from eca_serve.cli import main
from eca_serve.cli.profile_entry import Cell, recommend, write_serving
from eca_serve.dataplane import DataPlane
from eca_serve.errors import ConfigError, NotReadyError
from eca_serve.pipelines.contract import ClassifyParams
from eca_serve.pipelines.images import DecodeLimits
from eca_serve.pipelines.manager import ModelManager, ServingOptions, policy_for
from eca_serve.repository import ServingSpec, read_config
from eca_serve.runtime import BackendOptions
from tests.manual_clock import advance, run_with_manual_clock
from tests.serving_utils import export_small_classifier

SHIPPED = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("policy_repo")
    export_small_classifier(root)
    return root / "shapes_small" / "1"


@pytest.fixture
def entry(exported: Path, tmp_path: Path) -> Path:
    """A private copy of the exported entry, free to rewrite."""
    folder = tmp_path / "repo" / "shapes_small" / "1"
    shutil.copytree(exported, folder)
    return folder


def config_with(folder: Path, **serving: object):
    return read_config(folder, verify=False).model_copy(update={"serving": ServingSpec(**serving)})


def test_policy_precedence_is_config_json_then_server_settings_then_device_default(exported: Path) -> None:
    bare = read_config(exported, verify=False)
    assert policy_for(bare, "cpu", {}).max_batch_size == 4
    assert policy_for(bare, "cpu", {"max_batch_size": 2}).max_batch_size == 2
    block = config_with(exported, max_batch_size=1, timeout_s=5.0)
    policy = policy_for(block, "cpu", {"max_batch_size": 2, "instances": 1, "timeout_s": 30.0})
    assert (policy.max_batch_size, policy.timeout_s, policy.instances, policy.max_queue_size) == (1, 5.0, 1, 64)


def test_a_serving_block_for_another_device_is_ignored(exported: Path) -> None:
    cpu_block = config_with(exported, device="cpu", max_batch_size=1)
    assert policy_for(cpu_block, "cpu", {}).max_batch_size == 1
    assert policy_for(cpu_block, "cuda:1", {}).max_batch_size == 32
    assert policy_for(config_with(exported, max_batch_size=1), "cuda", {}).max_batch_size == 1  # no device: every one


def test_serving_block_is_strict_and_a_bad_combination_names_the_entry(exported: Path) -> None:
    with pytest.raises(ValidationError, match="extra"):
        ServingSpec(max_delay_ms=1)
    for bad in ({"max_batch_size": 0}, {"max_queue_delay_ms": float("inf")}, {"timeout_s": 0}, {"device": "tpu"}):
        with pytest.raises(ValidationError):
            ServingSpec(**bad)
    with pytest.raises(ConfigError, match="shapes_small/1: .*max_queue_size must be >= max_batch_size"):
        policy_for(config_with(exported, max_batch_size=16, max_queue_size=8), "cpu", {})


def test_shipped_models_keep_the_batch_sizes_the_start_up_timing_gave_them() -> None:
    classifier = read_config(SHIPPED / "shapes_classifier" / "1", verify=False)
    detector = read_config(SHIPPED / "shapes_detector" / "1", verify=False)
    assert policy_for(classifier, "cpu", {}).max_batch_size == 4
    assert policy_for(detector, "cpu", {}).max_batch_size == 1  # ~40-50 ms a run: model-bound
    assert policy_for(detector, "cuda", {}).max_batch_size == 32  # measured on CPU only


ORT = {"engine": "onnxruntime", "precision": "fp32"}  # what cells without an engine measured


def cells(rows: list[tuple[int, int, float, float]]) -> list[Cell]:
    return [Cell(*row) for row in rows]


def test_recommend_takes_the_smallest_batch_within_5_percent_of_the_best() -> None:
    measured = cells([(1, 1, 300, 0.7), (1, 2, 380, 1.1), (1, 4, 400, 2.0), (2, 1, 500, 0.7), (2, 2, 565, 1.3),
                      (2, 4, 580, 2.5), (2, 8, 590, 5.0)])
    assert recommend(measured, "cpu") == ServingSpec(device="cpu", max_batch_size=2, instances=2, **ORT)
    assert recommend(measured, "cuda:0").device == "cuda"


def test_recommend_gives_batch_one_to_a_model_bound_model_on_cpu_only() -> None:
    measured = cells([(1, 1, 20, 45.0), (1, 4, 26, 150.0), (2, 1, 22, 80.0), (2, 4, 27, 290.0)])
    assert recommend(measured, "cpu") == ServingSpec(device="cpu", max_batch_size=1, instances=2, **ORT)
    assert recommend(measured, "cuda").max_batch_size == 4


def test_recommend_batches_a_model_bound_model_that_gains_from_batches() -> None:
    # ECA-ResNet-50 INT8 on this CPU (issue #16): 44 img/s one by one, 61 in batches of 8
    measured = cells([(1, 1, 44, 22.7), (1, 4, 52, 77.0), (1, 8, 61, 131.0), (2, 1, 45, 44.0), (2, 8, 60, 266.0)])
    assert recommend(measured, "cpu") == ServingSpec(device="cpu", max_batch_size=8, instances=1, **ORT)


def test_write_serving_changes_only_the_serving_block(entry: Path) -> None:
    before = json.loads((entry / "config.json").read_text())
    write_serving(entry, ServingSpec(device="cpu", timeout_s=5.0))
    write_serving(entry, ServingSpec(device="cpu", max_batch_size=2, instances=1))  # keeps the block's timeout_s
    after = json.loads((entry / "config.json").read_text())
    assert after.pop("serving") == {"device": "cpu", "timeout_s": 5.0, "max_batch_size": 2, "instances": 1}
    assert after == {k: v for k, v in before.items() if k != "serving"}
    read_config(entry)  # the artifacts still match their sha256


def test_profile_recommend_write_measures_the_entry_and_stores_its_block(entry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["profile", "shapes_small:1", "--recommend", "--write", "--model-repository", str(entry.parent.parent),
            "--seconds", "0.05", "--batch-sizes", "1,2", "--instance-counts", "1,2", "--engines", "onnxruntime", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(c["instances"], c["batch_size"]) for c in report["cells"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(c["images_per_s"] > 0 and c["latency_ms"] > 0 for c in report["cells"])
    assert read_config(entry).serving == ServingSpec(**report["recommended"])
    assert main(["profile", "nope", "--recommend", "--model-repository", str(entry.parent.parent)]) == 2
    assert main(["profile", "eca_resnet18", "--write"]) == 2
    assert "needs --recommend" in capsys.readouterr().err


class WorkerFault(BaseException):
    """Raised by the metrics hook: not an ``Exception``, so it ends the batcher's worker."""


def test_a_model_whose_worker_crashed_is_not_ready_answers_503_and_recovers(entry: Path) -> None:
    hook_calls: list[int] = []

    def on_batch_for(model: str):
        def on_batch(size: int, queue_times: list[float], compute_s: float) -> None:
            hook_calls.append(size)
            if len(hook_calls) == 1:
                raise WorkerFault("bug in a hook")
        return on_batch

    async def body() -> None:
        options = ServingOptions(repository=entry.parent.parent, backend=BackendOptions(device="cpu"), limits=DecodeLimits())
        manager = ModelManager(options, on_batch_for=on_batch_for)
        metrics = ServerMetrics(inflight=lambda: 0)
        metrics.watch(manager)
        await manager.load_all()
        try:
            pipeline = manager.get("shapes_small")
            image = np.zeros((3, 64, 64), np.float32)
            assert len((await pipeline.run([image], ClassifyParams()))[0].logits) == 8  # answered, then the hook crashed the worker
            for _ in range(10):
                await asyncio.sleep(0)
            assert not pipeline.ready and not manager.ready
            assert repository_index(manager) == [{"name": "shapes_small", "version": "1", "state": "UNAVAILABLE",
                                                  "reason": "a batch worker crashed and is being restarted"}]
            assert live_value(metrics, "eca_serve_model_ready") == 0.0
            assert live_value(metrics, "eca_serve_worker_crashes_total") == 1.0
            with pytest.raises(NotReadyError) as refused:
                await routes_v2.model_ready("shapes_small", DataPlane(manager, max_inflight=8))
            assert status_of(refused.value) == 503
            with pytest.raises(NotReadyError):
                await pipeline.run([image], ClassifyParams())  # a caller holding the pipeline is refused too
            advance(0.05)
            for _ in range(10):
                await asyncio.sleep(0)
            assert pipeline.ready and manager.ready
            assert (await routes_v2.model_ready("shapes_small", DataPlane(manager, max_inflight=8)))["ready"] is True
            assert len((await pipeline.run([image], ClassifyParams()))[0].logits) == 8
            assert pipeline.batcher.stats().worker_crash_count == 1
            assert live_value(metrics, "eca_serve_model_ready") == 1.0
            assert repository_index(manager)[0]["state"] == "READY"
        finally:
            await manager.stop(grace_s=1.0)

    run_with_manual_clock(body, 60.0)


def live_value(metrics: ServerMetrics, name: str) -> float:
    """The one sample ``name`` of the shapes_small/1 series in the /metrics text."""
    line = f'{name}{{model="shapes_small",version="1"}} '
    found = [row[len(line):] for row in metrics.render().decode().splitlines() if row.startswith(line)]
    assert len(found) == 1, found
    return float(found[0])
