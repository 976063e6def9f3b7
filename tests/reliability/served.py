"""In-process servers of the reliability tests: the model repository they serve and a handle with the good answer."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
from fastapi import FastAPI

from eca_serve.settings import Settings
from tests.reliability.clients import raw_image, same_classes, top_classes
from tests.reliability.corpus import good_png
from tests.serving_utils import export_small_classifier, export_tiny_detector, running_server

CLASSIFIER, DETECTOR = "shapes_small", "det"


@dataclass(frozen=True)
class Repository:
    """A model repository with an 8-class 64 px classifier and a tiny Mask R-CNN (random seeded weights)."""

    root: Path
    classifier: str = CLASSIFIER
    detector: str = DETECTOR


def build_repository(root: Path) -> Repository:
    """Export both models into ``root`` (about 8 s on 2 cores)."""
    export_small_classifier(root, CLASSIFIER)
    export_tiny_detector(root, DETECTOR)
    return Repository(root)


@dataclass(frozen=True)
class Served:
    """A real server (uvicorn on loopback) and its answer to the good image, taken at start."""

    base: str
    app: FastAPI
    settings: Settings
    good: bytes
    good_answer: list[list[tuple[int, float]]]

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def classify_good(base: str, good: bytes) -> list[list[tuple[int, float]]]:
    """The classifier's top-8 answer for ``good`` (every class, so any change of the scores shows)."""
    prepared = raw_image(f"/v1/models/{CLASSIFIER}/classify?top_k=8", good, "image/png")
    response = httpx.post(base + prepared.path, content=prepared.content, headers=prepared.headers, timeout=60)
    assert response.status_code == 200, response.text
    return top_classes(response.json())


@contextmanager
def serve(settings: Settings) -> Iterator[Served]:
    """A real server for ``settings``, ready, with the good image's answer recorded."""
    with running_server(settings) as (base, app):
        good = good_png()
        yield Served(base, app, settings, good, classify_good(base, good))


def assert_still_serving(served: Served) -> None:
    """The server answers the good image as it did at start."""
    answer = classify_good(served.base, served.good)
    assert same_classes(answer, served.good_answer), f"good image now gets {answer}, at start {served.good_answer}"
