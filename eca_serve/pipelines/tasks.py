"""The task registry: which pipeline serves each ``task`` of a config.json.

A new task (or model family with its own postprocessing) registers its pipeline here; the manager
and every front end then find it by the entry's ``task`` alone.
"""

from __future__ import annotations

from eca_serve.errors import ConfigError
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.classification import ClassificationPipeline
from eca_serve.pipelines.detection import DetectionPipeline

_PIPELINES: dict[str, type[ModelPipeline]] = {}


def register_task(task: str, pipeline: type[ModelPipeline]) -> None:
    """Serve entries whose ``task`` is ``task`` with ``pipeline``.

    Raises:
        ConfigError: ``task`` is registered already.
    """
    if task in _PIPELINES:
        raise ConfigError(f"task {task!r} is registered already (by {_PIPELINES[task].__name__})")
    _PIPELINES[task] = pipeline


def pipeline_class(task: str) -> type[ModelPipeline]:
    """The pipeline of ``task``.

    Raises:
        ConfigError: no pipeline serves ``task``.
    """
    try:
        return _PIPELINES[task]
    except KeyError:
        raise ConfigError(f"no pipeline serves task {task!r}; registered: {sorted(_PIPELINES)}") from None


def registered_tasks() -> list[str]:
    return sorted(_PIPELINES)


register_task("classification", ClassificationPipeline)
register_task("detection", DetectionPipeline)
register_task("instance_segmentation", DetectionPipeline)
