"""Model control modes, version policies, the repository index and draining rollouts, on real servers."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import pytest

from eca_serve.errors import ConfigError
from eca_serve.pipelines.contract import ClassifyParams
from eca_serve.pipelines.control import NOT_IN_POLICY, UNLOADED
from eca_serve.pipelines.images import DecodeLimits
from eca_serve.pipelines.manager import ModelManager, ServingOptions
from eca_serve.repository import CONFIG_FILE, VersionPolicy, parse_config
from eca_serve.runtime import BackendOptions
from eca_serve.settings import Settings
from tests.hostile_images import png_bytes
from tests.serving_utils import export_small_classifier, running_server

NAME = "shapes_small"
PNG = {"content": png_bytes(), "headers": {"content-type": "image/png"}}
AUTH = {"authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One exported version-1 entry, copied into each test's repository as any version."""
    root = tmp_path_factory.mktemp("exported")
    export_small_classifier(root)
    return root / NAME / "1"


def add_version(root: Path, source: Path, version: int, policy: dict[str, Any] | None = None) -> Path:
    """Copy ``source`` in as ``root/NAME/version`` (its config renumbered), appearing at once (rename)."""
    staging = root.parent / f"staging-{root.name}-{version}"
    shutil.copytree(source, staging)
    config = json.loads((staging / CONFIG_FILE).read_text())
    config["version"] = version
    config["version_policy"] = policy
    (staging / CONFIG_FILE).write_text(json.dumps(config))
    (root / NAME).mkdir(parents=True, exist_ok=True)
    return staging.rename(root / NAME / str(version))


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def states(client: httpx.Client, base: str) -> dict[str, tuple[str, str]]:
    return {f"{e['name']}/{e['version']}": (e["state"], e["reason"]) for e in client.post(f"{base}/v2/repository/index").json()}


def answering_version(client: httpx.Client, base: str, version: int | None = None) -> int:
    params = {} if version is None else {"version": version}
    response = client.post(f"{base}/v1/models/{NAME}/classify", params=params, **PNG)
    assert response.status_code == 200, response.text
    return response.json()["version"]


def test_poll_mode_serves_a_copied_version_then_drops_it_when_deleted(tmp_path: Path, exported: Path) -> None:
    root = tmp_path / "models"
    add_version(root, exported, 1)
    settings = Settings(model_repository=root, model_control_mode="poll", repository_poll_secs=0.1)
    with running_server(settings) as (base, _), httpx.Client(timeout=60) as client:
        assert answering_version(client, base) == 1
        add_version(root, exported, 2)
        wait_for(lambda: states(client, base).get(f"{NAME}/2") == ("READY", ""), "version 2 to be READY")
        assert answering_version(client, base) == 2 and answering_version(client, base, 1) == 1
        shutil.rmtree(root / NAME / "2")
        wait_for(lambda: f"{NAME}/2" not in states(client, base), "version 2 to leave the index")
        assert answering_version(client, base) == 1
        assert client.post(f"{base}/v1/models/{NAME}/classify", params={"version": 2}, **PNG).status_code == 404
        assert client.get(f"{base}/v2/health/ready").status_code == 200


def test_poll_mode_rolls_out_latest_and_retires_the_old_version(tmp_path: Path, exported: Path) -> None:
    root = tmp_path / "models"
    add_version(root, exported, 1, {"latest": {"num_versions": 1}})
    settings = Settings(model_repository=root, model_control_mode="poll", repository_poll_secs=0.1)
    with running_server(settings) as (base, _), httpx.Client(timeout=60) as client:
        add_version(root, exported, 2, {"latest": {"num_versions": 1}})
        wait_for(lambda: states(client, base).get(f"{NAME}/1") == ("UNAVAILABLE", NOT_IN_POLICY), "version 1 retired")
        assert states(client, base)[f"{NAME}/2"] == ("READY", "")
        assert answering_version(client, base) == 2


def test_a_version_that_fails_to_load_shows_its_error_and_the_old_one_keeps_serving(tmp_path: Path, exported: Path) -> None:
    root = tmp_path / "models"
    add_version(root, exported, 1, {"latest": {"num_versions": 1}})
    settings = Settings(model_repository=root, model_control_mode="poll", repository_poll_secs=0.1)
    with running_server(settings) as (base, _), httpx.Client(timeout=60) as client:
        damaged = shutil.copytree(exported, tmp_path / "damaged")
        with (damaged / "model.onnx").open("ab") as f:
            f.write(b"damaged")
        add_version(root, damaged, 2, {"latest": {"num_versions": 1}})
        wait_for(lambda: "does not match its sha256" in states(client, base)[f"{NAME}/2"][1], "version 2 to fail")
        assert states(client, base)[f"{NAME}/2"][0] == "UNAVAILABLE"
        assert states(client, base)[f"{NAME}/1"] == ("READY", "")  # not retired: its successor never loaded
        assert answering_version(client, base) == 1


@pytest.mark.parametrize(("policy", "served"), [
    (None, {1, 2, 3}),
    ({"all": {}}, {1, 2, 3}),
    ({"latest": {"num_versions": 2}}, {2, 3}),
    ({"specific": {"versions": [1, 3, 7]}}, {1, 3}),
])
def test_the_newest_config_s_version_policy_picks_the_served_versions(tmp_path: Path, exported: Path, policy, served) -> None:
    root = tmp_path / "models"
    for version in (1, 2, 3):
        add_version(root, exported, version, policy if version == 3 else {"latest": {"num_versions": 1}})
    manager = ModelManager(ServingOptions(repository=root, backend=BackendOptions(device="cpu"), limits=DecodeLimits()))
    wanted, skipped = manager.control.scan()
    assert {v for _, v in wanted} == served
    assert skipped == {(NAME, v): NOT_IN_POLICY for v in {1, 2, 3} - served}


@pytest.mark.parametrize("policy", [{}, {"all": {}, "latest": {"num_versions": 1}}, {"latest": {"num_versions": 0}},
                                    {"specific": {"versions": []}}, {"newest": {}}])
def test_a_malformed_version_policy_is_refused(tmp_path: Path, exported: Path, policy) -> None:
    with pytest.raises(ValueError):
        VersionPolicy.model_validate(policy)
    folder = add_version(tmp_path / "models", exported, 1, policy)
    with pytest.raises(ConfigError, match="version_policy"):
        parse_config(folder)


def test_explicit_mode_unload_load_and_index_states(tmp_path: Path, exported: Path) -> None:
    root = tmp_path / "models"
    add_version(root, exported, 1)
    add_version(root, exported, 2, {"specific": {"versions": [2]}})
    settings = Settings(model_repository=root, admin_enabled=True, admin_token="s3cret")
    with running_server(settings) as (base, _), httpx.Client(timeout=60) as client:
        assert states(client, base) == {f"{NAME}/1": ("UNAVAILABLE", NOT_IN_POLICY), f"{NAME}/2": ("READY", "")}
        unloaded = client.post(f"{base}/v2/repository/models/{NAME}/unload", headers=AUTH)
        assert unloaded.json() == {"name": NAME, "unloaded_versions": [2]}
        assert states(client, base) == {f"{NAME}/1": ("UNAVAILABLE", NOT_IN_POLICY), f"{NAME}/2": ("UNAVAILABLE", UNLOADED)}
        assert client.post(f"{base}/v1/models/{NAME}/classify", **PNG).status_code == 404
        loaded = client.post(f"{base}/v2/repository/models/{NAME}/load", headers=AUTH)
        assert loaded.json() == {"name": NAME, "loaded_versions": [2]}
        assert states(client, base)[f"{NAME}/2"] == ("READY", "")
        assert answering_version(client, base) == 2


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_are_refused_outside_explicit_mode(tmp_path: Path, exported: Path, mode: str) -> None:
    root = tmp_path / "models"
    add_version(root, exported, 1)
    settings = Settings(model_repository=root, admin_enabled=True, admin_token="s3cret", model_control_mode=mode)
    with running_server(settings) as (base, _), httpx.Client(timeout=60) as client:
        for action in ("load", "unload"):
            response = client.post(f"{base}/v2/repository/models/{NAME}/{action}", headers=AUTH)
            assert response.status_code == 400 and "explicit" in response.json()["error"]
        assert answering_version(client, base) == 1


def test_a_request_in_flight_on_the_retired_version_completes(tmp_path: Path, exported: Path) -> None:
    root = tmp_path / "models"
    add_version(root, exported, 1, {"latest": {"num_versions": 1}})

    async def body() -> None:
        options = ServingOptions(repository=root, backend=BackendOptions(device="cpu"), limits=DecodeLimits(), grace_period_s=30)
        manager = ModelManager(options)
        await manager.load_all()
        old = manager.get(NAME)
        gate = asyncio.Event()
        task = old.tasks[0]

        class Held:  # the entry's task, whose postprocessing waits: the request has run the model, inside `run`
            def __getattr__(self, name: str) -> object:
                return getattr(task, name)

            async def postprocess(self, *args: object) -> object:
                await gate.wait()
                return await task.postprocess(*args)

        old.tasks[0] = Held()
        request = asyncio.create_task(old.run([np.zeros((3, 64, 64), np.float32)], ClassifyParams()))
        while old.active == 0:
            await asyncio.sleep(0.01)
        add_version(root, exported, 2, {"latest": {"num_versions": 1}})
        rollout = asyncio.create_task(manager.control.sync())
        while (NAME, 1) not in manager.control.unloading:
            await asyncio.sleep(0.01)
        index = {e["version"]: e["state"] for e in manager.control.index()}
        assert index == {"1": "UNLOADING", "2": "READY"} and manager.get(NAME).config.version == 2
        for _ in range(20):
            await asyncio.sleep(0.05)
        assert not rollout.done() and old.ready  # still draining: the held request is not cut off
        gate.set()
        results = await request
        assert len(results) == 1 and len(results[0].logits) == 8
        assert await rollout == [(NAME, 2)]
        assert not old.ready and {e["version"]: e["state"] for e in manager.control.index()} == {"1": "UNAVAILABLE", "2": "READY"}
        await manager.stop(1.0)

    asyncio.run(body())
