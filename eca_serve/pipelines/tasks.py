"""The task registry: which model pipeline and `Task` serve each ``task`` of a config.json.

A new task registers here (or, for a test, in its own module); the manager and every front end then
find it by the entry's ``task``, and an ``extra`` task is served by every entry of the same model
pipeline whose graph has the outputs it needs. Front ends build their routes from this list.
"""

from __future__ import annotations

from dataclasses import dataclass

from eca_serve.errors import ConfigError
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.classification import ClassificationPipeline, ClassificationTask
from eca_serve.pipelines.detection import DetectionPipeline, DetectionTask, InstanceSegmentationTask
from eca_serve.pipelines.embedding import EmbeddingTask
from eca_serve.pipelines.task import Task
from eca_serve.repository import EntryConfig


@dataclass(frozen=True)
class Registered:
    task: Task
    pipeline: type[ModelPipeline]


_TASKS: dict[str, Registered] = {}


def register_task(task: Task, pipeline: type[ModelPipeline]) -> None:
    """Serve entries whose ``task`` is ``task.name`` with ``pipeline``.

    Raises:
        ConfigError: a task of that name is registered already.
    """
    if task.name in _TASKS:
        raise ConfigError(f"task {task.name!r} is registered already (by {_TASKS[task.name].pipeline.__name__})")
    _TASKS[task.name] = Registered(task, pipeline)


def unregister_task(name: str) -> None:
    """Forget task ``name`` (a test's own task, after the test)."""
    _TASKS.pop(name, None)


def _registered(name: str) -> Registered:
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(f"no pipeline serves task {name!r}; registered: {registered_tasks()}") from None


def pipeline_class(task: str) -> type[ModelPipeline]:
    """The model pipeline of ``task``.

    Raises:
        ConfigError: no pipeline serves ``task``.
    """
    return _registered(task).pipeline


def task_of(name: str) -> Task:
    """The registered task ``name``.

    Raises:
        ConfigError: no such task.
    """
    return _registered(name).task


def tasks_for(config: EntryConfig) -> list[Task]:
    """The tasks an entry serves: its own, then every ``extra`` task of the same pipeline its graph can feed."""
    own = _registered(config.task)
    tasks = [own.task]
    for entry in _TASKS.values():
        task = entry.task
        if (entry.pipeline is own.pipeline and task.extra and task.name != own.task.name and task.serves(config)
                and task.action not in {t.action for t in tasks}):
            tasks.append(task)
    return tasks


def registered_tasks() -> list[str]:
    return sorted(_TASKS)


def all_tasks() -> list[Task]:
    """Every registered task, in registration order (the v1 route table's order)."""
    return [entry.task for entry in _TASKS.values()]


register_task(ClassificationTask(), ClassificationPipeline)
register_task(DetectionTask(), DetectionPipeline)
register_task(InstanceSegmentationTask(), DetectionPipeline)
register_task(EmbeddingTask(), ClassificationPipeline)
