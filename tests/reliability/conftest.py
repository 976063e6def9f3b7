"""Fixtures of the reliability suite: one small model repository per session and the shared server on it."""

from __future__ import annotations

from typing import Iterator

import pytest

from eca_serve.settings import Settings
from tests.reliability.served import Repository, Served, build_repository, serve


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return build_repository(tmp_path_factory.mktemp("reliability_models"))


@pytest.fixture(scope="session")
def server(repository: Repository) -> Iterator[Served]:
    """The shared server: default input limits, both models, small CPU batches."""
    settings = Settings(model_repository=repository.root, max_batch_size=4, max_queue_delay_ms=2, request_timeout_s=30)
    with serve(settings) as served:
        yield served
