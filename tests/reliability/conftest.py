"""Fixtures of the reliability suite: one small model repository per session and the shared server on it."""

from __future__ import annotations

from pathlib import Path
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
    settings = Settings(model_repository=repository.root, max_batch_size=4, max_queue_delay_ms=2, timeout_s=30)
    with serve(settings) as served:
        yield served


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long runs (``@pytest.mark.slow``) of this suite are skipped unless a ``-m`` expression selects tests.

    pyproject.toml registers the marker but does not deselect it, so without this the default
    ``pytest`` would run them.
    """
    if config.getoption("markexpr"):
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="long run: select with -m slow")
    for item in items:
        if "slow" in item.keywords and here in item.path.parents:
            item.add_marker(skip)
