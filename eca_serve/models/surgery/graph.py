"""Rewriting a network's forward with torch.fx to call inserted attention modules.

The original modules stay where they are, so every original state-dict key is unchanged; each
inserted module is a child of its convolution (``layer1.0.conv1.eca``) and adds keys under that path.
The rewritten model is a ``torch.fx.GraphModule`` with methods generated from the traced graph:
``forward`` (the network with attention), ``forward_with_attention`` (the same computation, also
returning every attention module's weights) and, for a classifier, ``forward_with_embedding`` (also
returning the classification layer's input), all scriptable and exportable to ONNX.
"""

from __future__ import annotations

import copy
import operator
from typing import Any, Mapping

import torch
from torch import Tensor, fx, nn

from eca_serve.errors import ConfigError
from eca_serve.layers import EcaModule, SEModule
from eca_serve.models.surgery.gates import SurgicalEca, SurgicalSE
from eca_serve.models.surgery.spec import SurgerySpec


def _norm_types() -> tuple[type, ...]:
    from torchvision.ops import FrozenBatchNorm2d

    return (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


class _Tracer(fx.Tracer):
    """Traces into a module only if it holds a convolution; everything else is a leaf.

    NOTE: leaves keep their own forward, so modules that branch on ``self.training`` (torchvision's
    StochasticDepth, FrozenBatchNorm2d) behave in training as they did before surgery; traced through,
    the branch would be frozen at trace time.
    """

    def __init__(self, root: nn.Module, head: str | None = None) -> None:
        super().__init__()
        self._with_conv = {id(m) for m in root.modules() if any(isinstance(c, nn.Conv2d) for c in m.modules())}
        self._head = head

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._head is not None and self._head.startswith(f"{module_qualified_name}."):
            return False  # traced into down to ``head`` (e.g. ``classifier`` to reach ``classifier.1``)
        if isinstance(m, (EcaModule, SEModule)) or id(m) not in self._with_conv:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _trace(module: nn.Module, head: str | None = None) -> fx.Graph:
    try:
        return _Tracer(module, head).trace(module)
    except Exception as exc:  # torch.fx raises many kinds (TraceError, TypeError, ...) on dynamic code
        raise ConfigError(f"cannot trace {type(module).__name__} for surgery: {exc}") from exc


def _insertion_point(graph: fx.Graph, module: nn.Module, target: str) -> fx.Node:
    """The node after which the attention goes: the convolution's BatchNorm if that is its only user."""
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == target]
    if len(calls) != 1:
        raise ConfigError(f"surgery target {target!r} is called {len(calls)} times in the forward, not once")
    node = calls[0]
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_module":
        norm = module.get_submodule(str(users[0].target))
        # FrozenBatchNorm2d has no num_features; every BN has a per-channel weight
        if isinstance(norm, _norm_types()) and norm.weight.shape[0] == module.get_submodule(target).out_channels:
            return users[0]
    return node


def _rewrite(graph: fx.Graph, module: nn.Module, gates: list[str], collect: bool) -> None:
    """Insert a call of every gate (``<conv>.<kind>`` relative paths); with ``collect`` the graph returns
    ``(original output, {gate path: weights [B, C]})``."""
    weights: dict[str, fx.Node] = {}
    for gate in gates:
        after = _insertion_point(graph, module, gate.rsplit(".", 1)[0])
        if collect:
            with graph.inserting_after(after):
                module_node = graph.get_attr(gate)
            with graph.inserting_after(module_node):
                consumer = graph.call_method("forward_with_weights", (module_node, after))
            with graph.inserting_after(consumer):
                new = graph.call_function(operator.getitem, (consumer, 0))
            with graph.inserting_after(new):
                weights[gate] = graph.call_function(operator.getitem, (consumer, 1))
        else:
            with graph.inserting_after(after):
                consumer = new = graph.call_module(gate, (after,))
        after.replace_all_uses_with(new, delete_user_cb=lambda user, consumer=consumer: user is not consumer)
    if collect:
        output = next(n for n in graph.nodes if n.op == "output")
        output.args = ((output.args[0], weights),)
        output.type = None  # the traced forward's return annotation no longer holds
    graph.lint()


class SurgeryGraphModule(fx.GraphModule):
    """A GraphModule with generated ``forward_with_attention`` (and, for classifiers, ``forward_with_embedding``)
    that survive ``copy.deepcopy``.

    NOTE: GraphModule's own deepcopy regenerates only ``forward`` and drops other attributes, so the
    generated methods, ``config``, ``attention_layers`` and ``surgery_spec`` are carried over here.
    """

    _CARRIED = ("config", "attention_layers", "surgery_spec")

    def __deepcopy__(self, memo: dict) -> SurgeryGraphModule:
        copied = super().__deepcopy__(memo)
        for name in self._CARRIED:
            if name in self.__dict__:
                setattr(copied, name, copy.deepcopy(self.__dict__[name], memo))
        for name, (src, globals_) in self._generated.items():
            _install_method(copied, name, src, globals_)
        return copied


def _install_method(gm: fx.GraphModule, name: str, src: str, globals_: dict[str, Any]) -> None:
    """Compile ``src`` (a graph's ``def forward(...)``) as the TorchScript-exported method ``name`` of ``gm``."""
    # NOTE: the private helper GraphModule.recompile itself uses: it registers the source with linecache,
    # which TorchScript needs to compile the method.
    from torch.fx.graph_module import _method_from_src

    src = src.replace("def forward(", f"def {name}(", 1)
    method = _method_from_src(name, src, globals_)
    # the class is private to this instance (GraphModule makes one per instance); the code is kept there
    # too, out of the instance's __dict__, which deepcopy copies (its globals hold modules)
    cls = type(gm)
    setattr(cls, name, torch.jit.export(method))
    cls._generated = {**cls.__dict__.get("_generated", {}), name: (src, globals_)}


def _return_embedding(graph: fx.Graph, head: str) -> None:
    """Make a collecting graph (traced down to ``head``) return ``(output, embedding [B, D], weights)``: the
    embedding is the input of the call of ``head``, flattened."""
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == head]
    if len(calls) != 1:
        raise ConfigError(f"classification layer {head!r} is called {len(calls)} times in the forward, not once")
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        embedding = graph.call_function(torch.flatten, (calls[0].args[0], 1))
    logits, weights = output.args[0]
    output.args = ((logits, embedding, weights),)
    graph.lint()


def rewrite(module: nn.Module, gates: list[str], head: str | None = None) -> fx.GraphModule:
    """``module`` traced and rewritten to call ``gates`` (relative paths of already attached modules).

    Args:
        head: A classifier's final layer (registry ``head``); None for a module without one (a backbone).

    Returns:
        A GraphModule with ``forward`` (as ``module`` plus attention), ``forward_with_attention``
        (``(output, {gate path: weights [B, C]})``) and, with ``head``, ``forward_with_embedding``
        (``(logits, embedding [B, D], weights)``); it shares every parameter with ``module``.
    """
    plain, collecting = _trace(module), _trace(module)
    _rewrite(plain, module, gates, collect=False)
    _rewrite(collecting, module, gates, collect=True)
    gm = SurgeryGraphModule(module, plain, class_name=type(module).__name__)
    code = collecting.python_code(root_module="self")
    _install_method(gm, "forward_with_attention", code.src, code.globals)
    if head is not None:
        embedding = _trace(module, head)
        _rewrite(embedding, module, gates, collect=True)
        _return_embedding(embedding, head)
        code = embedding.python_code(root_module="self")
        _install_method(gm, "forward_with_embedding", code.src, code.globals)
    gm.train(module.training)
    return gm


def apply_surgery(model: nn.Module, spec: SurgerySpec | None, head: str | None = None) -> nn.Module:
    """Insert ``spec``'s attention into ``model`` (its modules are reused, not copied).

    Args:
        model: A network whose forward (or whose ``spec.root`` submodule's forward) torch.fx can trace.
        spec: What to insert; None rewrites nothing but still adds ``forward_with_attention``.
        head: The classifier's final layer (registry ``head``): adds ``forward_with_embedding``. Only
            without ``spec.root`` (a rewritten backbone has no classification layer).

    Returns:
        The rewritten model: a GraphModule, or ``model`` itself with ``spec.root`` replaced by one.
        ``surgery_spec`` (``spec``) and ``attention_layers`` (gate paths) are set on it.

    Raises:
        ConfigError: a target that is not a Conv2d, already has attention, or is not called exactly once.
    """
    requested, spec = spec, spec or SurgerySpec(kind="eca", targets=())
    root = model.get_submodule(spec.root) if spec.root else model
    prefix = f"{spec.root}." if spec.root else ""
    gates = []
    for target in spec.targets:
        conv = model.get_submodule(target)
        if not isinstance(conv, nn.Conv2d) or not target.startswith(prefix):
            raise ConfigError(f"surgery target {target!r} is not an nn.Conv2d under {spec.root or 'the model'}")
        if hasattr(conv, spec.kind):
            raise ConfigError(f"{target!r} already has a {spec.kind!r} module")
        conv.add_module(spec.kind, spec.make_gate(conv.out_channels))
        gates.append(spec.module_path(target[len(prefix):]))
    gm = rewrite(root, gates, None if spec.root else head)
    if spec.root:
        parent, _, leaf = spec.root.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, gm)
    out = model if spec.root else gm
    out.surgery_spec = requested
    out.attention_layers = gate_paths(out)
    return out


def gate_paths(model: nn.Module) -> list[str]:
    """Paths of every channel-attention module, in registration order (the export's output order)."""
    return [p for p, m in model.named_modules() if isinstance(m, (EcaModule, SEModule))]


def describe(model: nn.Module) -> list[dict[str, Any]]:
    """One row per attention module: path, kind, channels, k (ECA) or hidden width (SE), parameters."""
    rows = []
    for path, m in model.named_modules():
        if isinstance(m, (EcaModule, SEModule)):
            kind = "eca" if isinstance(m, EcaModule) else "se"
            size = m.k_size if kind == "eca" else m.fc1.out_channels
            rows.append({"path": path, "kind": kind, "channels": m.channels, "k_or_hidden": size,
                         "params": sum(p.numel() for p in m.parameters())})
    return rows


def with_fresh_gates(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` plus ``model``'s own (freshly initialised) attention tensors, if ``state`` is a
    checkpoint of the network before surgery: original keys are unchanged by surgery, so such a
    checkpoint lacks exactly the keys under ``<conv>.<kind>.``. A state that holds any attention key
    is returned as is, to be loaded strictly; so is any state for a model without surgery (native ECA
    or SE layers never get fresh tensors)."""
    prefixes = tuple(p + "." for p, m in model.named_modules() if isinstance(m, (SurgicalEca, SurgicalSE)))
    if not prefixes or any(k.startswith(prefixes) for k in state):
        return dict(state)
    fresh = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    return {**state, **fresh}
