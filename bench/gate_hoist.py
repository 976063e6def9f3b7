"""The exact "pool before conv3" rewrite of ECA/SE gates, as an ONNX graph rewrite (bench only).

For a gate whose input map ``x`` [N, C, H, W] is the output of a 1x1, stride-1, unpadded, ungrouped ``Conv``
(BatchNormalization folded into it by the export, or kept as a node after it), the average pool commutes with
the affine map: ``GAP(W h + b) = W GAP(h) + b``. The rewrite pools the conv's input h [N, C/4, H, W] instead
and applies a copy of the conv (and BN) to the pooled [N, C/4, 1, 1] vector, so the gate no longer reads
conv3's output and no longer waits for it. Logits and attention weights stay equal up to float rounding.

Measured no faster on ONNX Runtime and OpenVINO (models/README.md, "ECA's cost per engine"), so
`eca-serve export` does not apply it; `bench/attention_cost_bench.py --rewrite` times it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_AFFINE_AFTER_CONV = frozenset({"BatchNormalization"})


def _attr(node: Any, name: str, default: list[int]) -> list[int]:
    found = next((a for a in node.attribute if a.name == name), None)
    if found is None:
        return default
    return list(found.ints) if found.ints else [found.i]


def _is_pointwise(graph: Any, conv: Any) -> bool:
    """A 1x1, stride-1, unpadded, undilated, ungrouped Conv (its weight an initializer)."""
    weight = next((t for t in graph.initializer if t.name == conv.input[1]), None)
    return (
        weight is not None
        and list(weight.dims[2:]) == [1, 1]
        and set(_attr(conv, "strides", [1])) == {1}
        and set(_attr(conv, "pads", [0])) == {0}
        and set(_attr(conv, "dilations", [1])) == {1}
        and _attr(conv, "group", [1]) == [1]
        and next((a.s for a in conv.attribute if a.name == "auto_pad"), b"NOTSET") in (b"NOTSET", b"VALID")
    )


def hoist_gate_pools(model: Any) -> int:
    """Pool every gate from its conv's input (``onnx.ModelProto``, in place); returns how many were moved.

    A gate is a ``GlobalAveragePool`` (the form `eca_serve.export.gates` writes) whose input map is also
    the data input of a ``Mul`` (the scaling); its input must come from ``Conv [-> BatchNormalization]``
    with a pointwise conv (`_is_pointwise`), else the gate is left as it is.
    """
    from onnx import helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    muls = {name for node in graph.node if node.op_type == "Mul" for name in node.input}
    inserts: dict[int, list[Any]] = {}
    moved = 0
    for pool in list(graph.node):
        if pool.op_type != "GlobalAveragePool" or pool.input[0] not in muls:
            continue
        chain, node = [], producer.get(pool.input[0])
        while node is not None and node.op_type in _AFFINE_AFTER_CONV:
            chain.insert(0, node)
            node = producer.get(node.input[0])
        if node is None or node.op_type != "Conv" or not _is_pointwise(graph, node):
            continue
        prefix = f"{pool.name or pool.output[0]}/hoisted"
        tensor = prefix + "_pooled_input"
        new = [helper.make_node("GlobalAveragePool", [node.input[0]], [tensor], name=prefix + "/Pool")]
        for k, step in enumerate([node, *chain]):
            out = pool.output[0] if k == len(chain) else f"{prefix}_{k}"
            copy = helper.make_node(step.op_type, [tensor, *step.input[1:]], [out], name=f"{prefix}/{step.op_type}{k}")
            copy.attribute.extend(step.attribute)
            new.append(copy)
            tensor = out
        inserts[id(pool)] = new
        moved += 1
    nodes = []
    for node in graph.node:
        nodes += inserts.get(id(node), [node])
    del graph.node[:]
    graph.node.extend(nodes)
    return moved


def hoisted_copy(src: Path, dst: Path) -> int:
    """Write `hoist_gate_pools` of the ONNX file ``src`` to ``dst``; returns the number of gates moved."""
    import onnx

    model = onnx.load(str(src))
    moved = hoist_gate_pools(model)
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return moved
