"""CPU serving choices: load-aware ONNX Runtime sessions, cores shared between instances, policy per model."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from eca_serve.batching import BatchPolicy
from eca_serve.cli.profile_entry import write_serving
from eca_serve.repository import ServingSpec, read_config
from eca_serve.pipelines.images import DecodeLimits
from eca_serve.runtime import stack_outputs
from eca_serve.pipelines.manager import ModelManager, ServingOptions, available_cores, backend_options_for
from eca_serve.runtime import BackendOptions, create_backend
from eca_serve.runtime.onnx_backend import LoadAwareSession
from tests.serving_utils import export_small_classifier


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cpu_repo")
    export_small_classifier(root)
    return root / "shapes_small" / "1"


class HeldSession:
    """Stands in for an InferenceSession to observe which member a run was given; runs block on ``gate``."""

    def __init__(self, name: str, gate: threading.Event) -> None:
        self.name, self.gate, self.started = name, gate, threading.Event()

    def run(self, output_names: list[str], feeds: dict) -> list[str]:
        self.started.set()
        assert self.gate.wait(5)
        return [self.name]


def test_a_lone_run_gets_the_solo_session_and_a_concurrent_one_the_shared() -> None:
    gate = threading.Event()
    solo, shared = HeldSession("solo", gate), HeldSession("shared", gate)
    session = LoadAwareSession(solo, shared)
    results: list[list[str]] = []
    first = threading.Thread(target=lambda: results.append(session.run([], {})))
    first.start()
    assert solo.started.wait(5)
    second = threading.Thread(target=lambda: results.append(session.run([], {})))
    second.start()
    assert shared.started.wait(5)
    gate.set()
    first.join(5)
    second.join(5)
    assert sorted(r[0] for r in results) == ["shared", "solo"]
    assert session.run([], {}) == ["solo"]  # idle again


def test_solo_and_shared_sessions_give_the_same_outputs(entry: Path) -> None:
    config = read_config(entry)
    backend = create_backend(entry, config, BackendOptions("onnxruntime", "cpu", threads=1, solo_threads=2))
    assert isinstance(backend.session, LoadAwareSession)
    batch = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    outputs = []
    for variant in backend.variants():
        with variant:
            outputs.append(stack_outputs(backend.infer(batch)))
    assert outputs[0].keys() == outputs[1].keys() and len(outputs[0]) > 1
    for key in outputs[0]:
        np.testing.assert_allclose(outputs[0][key], outputs[1][key], rtol=1e-5, atol=1e-6)


def test_a_plain_session_when_no_solo_threads_are_asked(entry: Path) -> None:
    backend = create_backend(entry, read_config(entry), BackendOptions("onnxruntime", "cpu", threads=1))
    assert not isinstance(backend.session, LoadAwareSession) and len(backend.variants()) == 1


def test_cpu_cores_are_shared_out_between_instances() -> None:
    cores = available_cores()
    shared = backend_options_for(BackendOptions(device="cpu"), BatchPolicy(instances=2))
    assert (shared.threads, shared.solo_threads) == (max(1, cores // 2), cores)
    assert backend_options_for(BackendOptions(device="cpu", threads=3), BatchPolicy(instances=2)).threads == 3
    assert backend_options_for(BackendOptions(device="cuda"), BatchPolicy(instances=2)) == BackendOptions(device="cuda")


def manager_for(repository: Path, **defaults: object) -> ModelManager:
    return ModelManager(ServingOptions(repository=repository, backend=BackendOptions(device="cpu"),
                                       policy_defaults=dict(defaults), limits=DecodeLimits()))


def test_the_served_batch_size_comes_from_config_json_then_the_settings(entry: Path, tmp_path: Path) -> None:
    repository = entry.parent.parent
    assert manager_for(repository)._build(entry).batcher.policy.max_batch_size == 4  # no block: device default
    assert manager_for(repository, max_batch_size=3)._build(entry).batcher.policy.max_batch_size == 3  # server setting
    folder = tmp_path / "shapes_small" / "1"
    shutil.copytree(entry, folder)
    write_serving(folder, ServingSpec(device="cpu", max_batch_size=1, instances=1))
    for defaults in ({}, {"max_batch_size": 3, "instances": 2}):  # the entry's block wins over the server's settings
        policy = manager_for(tmp_path, **defaults)._build(folder).batcher.policy
        assert (policy.max_batch_size, policy.instances) == (1, 1)


def test_the_served_pipeline_runs_two_instances_on_a_load_aware_session(entry: Path) -> None:
    pipeline = manager_for(entry.parent.parent)._build(entry)
    assert pipeline.batcher.policy.instances == 2
    expected = LoadAwareSession if available_cores() > 1 else object
    assert isinstance(pipeline.backend.session, expected)


def test_the_in_flight_limit_defaults_per_device_and_can_be_set() -> None:
    from eca_serve.settings import Settings, inflight_limit

    assert inflight_limit(Settings(device="cpu")) == 128
    assert inflight_limit(Settings(device="cuda:0")) == 1024
    assert inflight_limit(Settings(device="cpu", max_inflight_requests=7)) == 7
