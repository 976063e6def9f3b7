"""What one task is: parameters, v2 tensor signature, `Result` <-> tensors, v1 body, postprocessing.

A model pipeline (`eca_serve.pipelines.base.ModelPipeline`) runs the model; the tasks it serves turn
the same per-input outputs into answers. Front ends (v1 JSON, v2 HTTP and gRPC, ``eca-serve predict``)
only ever talk to a `Task`: none of them names one.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np
from pydantic import BaseModel

from eca_serve.errors import InferenceRequestError
from eca_serve.pipelines.contract import LayerWeights, Result, RunParams
from eca_serve.repository import EntryConfig, attention_output

# A v2 output column of N results: a numeric array, or BYTES items.
Column = Union[np.ndarray, list[bytes]]


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: full shape, -1 for variable dimensions (the first is N or D)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class OutputAsk:
    """One output a v2 request names, with its ``classification`` count (0: the raw tensor)."""

    name: str
    classification: int = 0


@dataclass(frozen=True)
class Ran:
    """One input after inference.

    Attributes:
        outputs: The model's outputs for this input (see `eca_serve.runtime.base`).
        input_shape: The model input [3, h, w] it ran on.
        size: (width, height) the answer's coordinates refer to: the image sent, or the tensor.
        filename: Client-side name of the image, if any.
    """

    outputs: dict[str, np.ndarray]
    input_shape: tuple[int, ...]
    size: tuple[int, int]
    filename: str | None = None


class Task:
    """One task, served by every model pipeline whose entry names it (or, for an ``extra`` task, whose
    graph has the outputs it needs).

    Class attributes:
        name: The config's ``task`` value.
        action: The v1 verb: ``POST /v1/models/{name}/{action}``; also the error "it does not <action>".
        params_type: The task's parameter model (v1 query, v2 ``parameters``, ``predict`` flags).
        result_type: One image's item of the v1 body's ``results``.
        extra: Also served by every entry of the same model pipeline whose graph has `required_outputs`
            (from the same forward pass as the entry's own task).
        batched: v2 outputs have one row per input (Triton's ``max_batch_size`` > 0).
        classification_outputs: Outputs the v2 ``classification`` extension applies to.
    """

    name: ClassVar[str]
    action: ClassVar[str]
    params_type: ClassVar[type[RunParams]] = RunParams
    result_type: ClassVar[type[BaseModel]]
    extra: ClassVar[bool] = False
    batched: ClassVar[bool] = True
    classification_outputs: ClassVar[tuple[str, ...]] = ()

    def required_outputs(self, config: EntryConfig) -> set[str]:
        """Graph outputs this task reads (an ``extra`` task is served only where the graph has them)."""
        return set()

    def serves(self, config: EntryConfig) -> bool:
        """Whether an entry's graph has every output this task reads."""
        return self.required_outputs(config) <= {o.name for o in config.outputs}

    def output_specs(self, config: EntryConfig) -> list[TensorSpec]:
        """The v2 outputs of this task (attention outputs are the pipeline's), in response order."""
        raise NotImplementedError

    def check_params(self, params: RunParams, config: EntryConfig) -> RunParams:
        """``params`` with the model's rules applied (defaults that depend on it, bounds it sets)."""
        return params

    def check_output(self, ask: OutputAsk, config: EntryConfig) -> None:
        """Refuse a ``classification`` count on an output this task cannot classify."""
        if ask.classification and ask.name not in self.classification_outputs:
            raise InferenceRequestError(f"classification does not apply to output {ask.name!r}")

    def v2_parameters(self, asked: list[OutputAsk]) -> dict[str, Any]:
        """Parameters implied by the outputs a v2 request names (added to its ``parameters``)."""
        return {}

    async def postprocess(self, ran: list[Ran], params: Any, config: EntryConfig, executor: Executor | None) -> list[Result]:
        """One `Result` per input, in order (``executor``: threads for costly per-image work)."""
        return [self.result_of(r, params, config) for r in ran]

    def result_of(self, ran: Ran, params: Any, config: EntryConfig) -> Result:  # pragma: no cover - abstract
        raise NotImplementedError

    def columns(self, config: EntryConfig, results: list[Any]) -> dict[str, Column]:
        """This task's v2 output tensors of N results, by output name."""
        raise NotImplementedError

    def classification_column(self, name: str, results: list[Any], k: int) -> Column:
        """BYTES items of the ``classification`` extension for output ``name`` (see `check_output`)."""
        raise NotImplementedError

    def v1_item(self, result: Any) -> BaseModel:
        """One image's entry of the v1 body (a ``result_type``)."""
        raise NotImplementedError

    def attention_fields(self, result: Any) -> dict[str, Any]:
        """What the v1 attention body carries besides the layers (the same pass's answer)."""
        return {}


def layer_weights(config: EntryConfig, outputs: dict[str, np.ndarray]) -> list[LayerWeights]:
    """One image's attention, one entry per layer of the config (weights [C])."""
    return [LayerWeights(a.name, a.kind, a.channels, a.k_size, np.asarray(outputs[attention_output(a.name)]).reshape(-1), a.shape)
            for a in config.attention]


def with_attention(config: EntryConfig, ran: Ran, params: RunParams) -> list[LayerWeights] | None:
    """The layers of ``ran`` when ``params`` ask for attention, else None."""
    return layer_weights(config, ran.outputs) if params.attention else None
