"""Fixtures shared by the deployment-file tests: the parsed files, and settings free of the environment."""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml

from eca_serve.settings import Settings
from tests.deploy.files import COMPOSE, DOCKERFILE, MANIFESTS, dockerfile_stages, load_docs
from tests.serving_utils import export_small_classifier, running_server



@pytest.fixture(scope="module", autouse=True)
def no_settings_from_environment():
    """Settings here come from the files alone, not from ECA_SERVE_* variables of the test run."""
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("ECA_SERVE_")]:
            patch.delenv(key)
        yield


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[dict[str, Any]]]:
    return dockerfile_stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(dockerfile) -> dict[str, Any]:
    return dockerfile[1][-1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """kind -> resource, over every file in docker/kubernetes/ (one resource per kind)."""
    out: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in load_docs(path):
            assert doc["kind"] not in out, f"two {doc['kind']} resources"
            out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    repository = tmp_path_factory.mktemp("deploy_repo")
    export_small_classifier(repository)
    with running_server(Settings(model_repository=repository)) as (base, app):
        yield base, app
