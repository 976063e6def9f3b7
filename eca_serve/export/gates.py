"""Rewrite the exported channel-attention gates into the form ONNX Runtime runs cheapest in INT8.

torch exports ECA's gate as ``ReduceMean(keepdims=0) -> Unsqueeze -> Conv1d -> Sigmoid -> Squeeze ->
Unsqueeze -> Unsqueeze -> Mul`` and SE's as ``ReduceMean -> Conv -> Relu -> Conv -> Sigmoid -> Flatten ->
Unsqueeze -> Unsqueeze -> Mul``. The shape glue between the pool and the scaling Mul is rewritten here to
one ``Reshape`` per view (ECA) or none (SE: the sigmoid's [N, C, 1, 1] scales the map directly), and the
pool becomes a ``GlobalAveragePool``. The arithmetic (pool, Conv1d / the two 1x1
convs, sigmoid, product) is unchanged, so outputs and attention weights stay equal to float rounding.

The pool is a ``GlobalAveragePool``: in FP32 it runs on ONNX Runtime's blocked (NCHWc) layout as fast
as ``ReduceMean``, and in a static INT8 (QDQ) graph it becomes a ``QLinearGlobalAveragePool`` on the
channels-last uint8 map, where a float ``ReduceMean`` needed a transpose and a dequantized copy of the
whole feature map (measured: bench/attention_cost_bench.py, models/README.md). In FP32 no form of the gate
avoids its cost: ONNX Runtime's NCHWc transformer takes no broadcasting Mul, so every gated block leaves
the blocked layout (models/README.md, "ECA's cost in the served graph").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

_SHAPE_OPS = frozenset({"Unsqueeze", "Squeeze", "Flatten", "Reshape"})
_MAX_GLUE = 4


@dataclass
class Gate:
    """One gate found in the graph: ``pool(x) -> core -> sigmoid -> [glue] -> attention``, ``Mul(x, .)``."""

    pool: Any
    core: list[Any]  # nodes from the pool's output to the sigmoid, in order (the sigmoid last)
    glue_back: list[Any]  # shape nodes from the sigmoid to the attention output
    glue_forward: list[Any]  # shape nodes from the attention output to the Mul
    mul: Any
    attention: str

    @property
    def kind(self) -> str:
        """``eca`` (one Conv1d over channels) or ``se`` (1x1 conv, relu, 1x1 conv)."""
        return "se" if sum(n.op_type == "Conv" for n in self.core) == 2 else "eca"


def find_gate(graph: Any, attention: str) -> Gate | None:
    """The gate producing ``attention`` [N, C], or None when the graph does not have the exported form."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    glue_back, node = [], producer.get(attention)
    while node is not None and node.op_type in _SHAPE_OPS and len(glue_back) < _MAX_GLUE:
        glue_back.insert(0, node)
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Sigmoid":
        return None
    core = [node]
    while True:
        node = producer.get(node.input[0])
        if node is None or len(core) > 6:
            return None
        if node.op_type in ("ReduceMean", "GlobalAveragePool"):
            break
        core.insert(0, node)
    pool = node
    ops = [n.op_type for n in core]
    keepdims = 1 if pool.op_type == "GlobalAveragePool" else (_ints(pool, "keepdims") or [1])[0]
    if pool.op_type == "ReduceMean" and _ints(pool, "axes") not in ([2, 3], [-2, -1]):
        return None
    if ops == ["Unsqueeze", "Conv", "Sigmoid"]:  # ECA: [N, C] -> [N, 1, C]
        if keepdims != 0 or _constant_ints(graph, core[0].input[1] if len(core[0].input) > 1 else "") != [1]:
            return None
    elif ops != ["Conv", "Relu", "Conv", "Sigmoid"] or keepdims != 1:  # SE: on [N, C, 1, 1]
        return None
    glue_forward, tensor = [], attention
    while len(glue_forward) <= _MAX_GLUE:
        users = consumers.get(tensor, [])
        if len(users) != 1:
            return None
        if users[0].op_type == "Mul":
            mul = users[0]
            return Gate(pool, core, glue_back, glue_forward, mul, attention) if pool.input[0] in mul.input else None
        if users[0].op_type not in _SHAPE_OPS:
            return None
        glue_forward.append(users[0])
        tensor = users[0].output[0]
    return None


def _ints(node: Any, name: str) -> list[int] | None:
    """An int or ints attribute of ``node`` as a list; None when absent."""
    found = next((a for a in node.attribute if a.name == name), None)
    if found is None:
        return None
    return list(found.ints) if found.ints else [found.i]


def _constant_ints(graph: Any, name: str) -> list[int] | None:
    """The values of a constant int tensor (initializer or Constant node output); None otherwise."""
    from onnx import numpy_helper

    tensor = next((t for t in graph.initializer if t.name == name), None)
    if tensor is None:
        node = next((n for n in graph.node if n.op_type == "Constant" and n.output[0] == name), None)
        tensor = next((a.t for a in node.attribute if a.name == "value"), None) if node is not None else None
    return None if tensor is None else [int(v) for v in numpy_helper.to_array(tensor).ravel()]


def rewrite_gates(model: Any, attention_outputs: Sequence[str]) -> int:
    """Rewrite every gate of ``attention_outputs`` in ``model`` (``onnx.ModelProto``, in place).

    ECA becomes ``GlobalAveragePool(x) [N,C,1,1] -> Reshape [N,1,C] -> Conv1d -> Sigmoid -> Reshape [N,C] (the
    attention output) -> Reshape [N,C,1,1] -> Mul(x, .)``; SE becomes ``pool(x) -> Conv -> Relu -> Conv ->
    Sigmoid [N,C,1,1] -> Mul(x, .)`` (pool: ``GlobalAveragePool``) with the attention output a ``Flatten`` beside it.

    Args:
        model: The exported graph.
        attention_outputs: Graph outputs carrying attention weights [N, C].

    Returns:
        How many gates were rewritten (gates not in the exported form are left as they are).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    gates = [g for g in (find_gate(graph, name) for name in attention_outputs) if g is not None]
    shapes: dict[tuple[int, ...], str] = {}

    def shape(*dims: int) -> str:
        if dims not in shapes:
            name = "gate_shape_" + "_".join(str(d).replace("-", "m") for d in dims)
            graph.initializer.append(numpy_helper.from_array(np.array(dims, dtype=np.int64), name))
            shapes[dims] = name
        return shapes[dims]

    replace: dict[int, list[Any]] = {}
    drop: set[int] = set()
    for k, gate in enumerate(gates):
        x, prefix = gate.pool.input[0], f"gate{k}"
        pooled = prefix + "_pool"
        new = [helper.make_node("GlobalAveragePool", [x], [pooled], name=prefix + "/GlobalAveragePool")]
        sigmoid = gate.core[-1]
        if gate.kind == "eca":
            conv = gate.core[1]
            conv.input[0] = prefix + "_row"
            new.append(helper.make_node("Reshape", [pooled, shape(0, 1, -1)], [conv.input[0]], name=prefix + "/ToRow"))
            new += [conv, sigmoid]
            new.append(helper.make_node("Reshape", [sigmoid.output[0], shape(0, -1)], [gate.attention], name=prefix + "/Weights"))
            new.append(helper.make_node("Reshape", [gate.attention, shape(0, -1, 1, 1)], [prefix + "_scale"], name=prefix + "/ToScale"))
            scale = prefix + "_scale"
        else:
            gate.core[0].input[0] = pooled
            new += gate.core
            new.append(helper.make_node("Flatten", [sigmoid.output[0]], [gate.attention], name=prefix + "/Weights", axis=1))
            scale = sigmoid.output[0]
        gate.mul.input[1 if gate.mul.input[0] == x else 0] = scale
        replace[id(gate.pool)] = new
        drop.update(id(n) for n in gate.core + gate.glue_back + gate.glue_forward)
    nodes = []
    for node in graph.node:
        if id(node) in replace:
            nodes += replace[id(node)]
        elif id(node) not in drop:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_constants(graph)
    return len(gates)


def _drop_unused_constants(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(keep)


def rewrite_gates_file(path: Path, attention_outputs: Sequence[str]) -> int:
    """`rewrite_gates` on the ONNX file at ``path``, saved in place; returns the number of gates rewritten."""
    import onnx

    model = onnx.load(str(path))
    count = rewrite_gates(model, attention_outputs)
    if count:
        onnx.save(model, str(path))
    return count
