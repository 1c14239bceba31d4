"""The exact rewrite ONNX Runtime's CPU provider gets before it runs a model.

The exported ONNX stays canonical - LayerNormalization is what TensorRT fuses and what the
fp16/int8 precision plans name - and the CPU sessions (parity runner, Triton CPU model,
benchmark) run it after one rewrite, so what is verified is what is served:

LayerNormalization over the last axis becomes Reshape [-1, 1, D] -> InstanceNormalization
(scale 1, bias 0, same epsilon) -> Reshape back, the same formula per row. Why: ORT's
LayerNormalization kernel costs more per row on 2 threads than on 1, and more than
InstanceNormalization's vectorised loop (docs/benchmarks.md#cpu-layernorm-rewrite).

The LayerNorm's gamma and beta are folded into the following linear layer when every consumer
is MatMul(x, W) + Add(b) with constant W and b: W' = diag(gamma) W, b' = b + beta W (computed
in float64). Otherwise they stay as one Mul and one Add.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def rewrite_for_ort_cpu(model: onnx.ModelProto, *, inplace: bool = False) -> onnx.ModelProto:
    """A copy of `model` (`inplace`: the model itself, for callers that drop the original: no second
    copy of the item table) with every float LayerNormalization over the last axis in
    InstanceNormalization form, gamma/beta folded where a linear layer follows (module doc).
    Other nodes are untouched; a model without such a node, or with subgraphs (If/Loop/Scan
    bodies may read any tensor), comes back unchanged."""
    if inplace:
        out = model
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    g = out.graph
    if any(a.type in _GRAPH_ATTRS for node in g.node for a in node.attribute):
        return out
    overridable = {i.name for i in g.input}  # an initializer listed as an input is not a constant
    consts = {init.name: init for init in g.initializer if init.name not in overridable}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in g.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {o.name for o in g.output}
    fresh = _FreshNames(g)
    one, zero, rows_prefix = fresh.tensor("ort_cpu/one"), fresh.tensor("ort_cpu/zero"), fresh.tensor("ort_cpu/rows")
    new_inits: dict[str, onnx.TensorProto] = {}
    folded: dict[tuple, str] = {}  # (weight or bias, norm) -> its folded initializer, made once
    nodes: list[onnx.NodeProto] = []
    for node in g.node:
        if not _rewritable(node, consts):
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        t = {k: fresh.tensor(f"{y}/{k}") for k in ("x_shape", "last_dim", "rows_shape", "rows", "normed_rows")}
        n = node.name or y
        nodes += [
            helper.make_node("Shape", [x], [t["x_shape"]], name=fresh.node(f"{n}/Shape")),
            helper.make_node("Shape", [x], [t["last_dim"]], name=fresh.node(f"{n}/Shape_last"), start=-1),
            helper.make_node("Concat", [rows_prefix, t["last_dim"]], [t["rows_shape"]], name=fresh.node(f"{n}/Concat"),
                             axis=0),
            helper.make_node("Reshape", [x, t["rows_shape"]], [t["rows"]], name=fresh.node(f"{n}/Reshape_rows")),
            helper.make_node("InstanceNormalization", [t["rows"], one, zero], [t["normed_rows"]],
                             name=fresh.node(f"{n}/InstanceNormalization"), epsilon=_epsilon(node)),
        ]
        users = consumers[y]
        foldable = y not in graph_outputs and users and all(
            _linear_bias(u, node, consts, consumers, graph_outputs) for u in users)
        normed = y if foldable else fresh.tensor(f"{y}/normed")
        # allowzero: x_shape is exact, so a 0 in it is a zero-size dimension, not "copy".
        nodes.append(helper.make_node("Reshape", [t["normed_rows"], t["x_shape"]], [normed],
                                      name=fresh.node(f"{n}/Reshape_back"), allowzero=1))
        if foldable:
            _fold_affine(node, users, consts, consumers, new_inits, folded, fresh)
            continue
        beta = _beta(node)
        scaled = fresh.tensor(f"{y}/scaled") if beta else y
        nodes.append(helper.make_node("Mul", [normed, node.input[1]], [scaled], name=fresh.node(f"{n}/Mul_gamma")))
        if beta:
            nodes.append(helper.make_node("Add", [scaled, beta], [y], name=fresh.node(f"{n}/Add_beta")))
    if len(nodes) == len(g.node):
        return out
    new_inits[one] = numpy_helper.from_array(np.ones(1, np.float32), one)
    new_inits[zero] = numpy_helper.from_array(np.zeros(1, np.float32), zero)
    new_inits[rows_prefix] = numpy_helper.from_array(np.array([-1, 1], np.int64), rows_prefix)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits.values())
    # Weights replaced by their folded copies would otherwise stay loaded next to them.
    used = {name for node in g.node for name in node.input} | graph_outputs | overridable
    for index in reversed(range(len(g.initializer))):  # in place: a rebuilt list would copy the item table
        if g.initializer[index].name not in used:
            del g.initializer[index]
    return out


class _FreshNames:
    """Names not yet used in the graph: node names need not be unique in an input model."""

    def __init__(self, g: onnx.GraphProto) -> None:
        self.tensors = {i.name for i in (*g.input, *g.output, *g.initializer)}
        self.tensors |= {x for node in g.node for x in (*node.input, *node.output)}
        self.nodes = {node.name for node in g.node}

    def tensor(self, name: str) -> str:
        return self._take(name, self.tensors)

    def node(self, name: str) -> str:
        return self._take(name, self.nodes)

    @staticmethod
    def _take(name: str, taken: set[str]) -> str:
        candidate, i = name, 0
        while candidate in taken:
            i += 1
            candidate = f"{name}_{i}"
        taken.add(candidate)
        return candidate


def _rewritable(node: onnx.NodeProto, consts: dict) -> bool:
    """A float LayerNormalization over the last axis with constant 1-D gamma (and beta), and
    only its normalised output in use."""
    if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("axis", -1) != -1 or any(node.output[1:]):
        return False
    gamma = consts.get(node.input[1])
    if gamma is None or gamma.data_type != TensorProto.FLOAT or len(gamma.dims) != 1:
        return False
    if _beta(node):
        beta = consts.get(node.input[2])
        if beta is None or beta.data_type != TensorProto.FLOAT or list(beta.dims) != list(gamma.dims):
            return False
    return True


def _beta(node: onnx.NodeProto) -> str | None:
    return node.input[2] if len(node.input) > 2 and node.input[2] else None


def _epsilon(node: onnx.NodeProto) -> float:
    return next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)


def _linear_bias(user: onnx.NodeProto, norm: onnx.NodeProto, consts: dict, consumers: dict,
                 graph_outputs: set) -> bool:
    """user is MatMul(y, W const [D, M]) whose only consumer is Add(., b const [M]), and the
    norm's gamma has D entries (a broadcast [1] gamma is not folded)."""
    y = norm.output[0]
    if user.op_type != "MatMul" or user.input[0] != y or user.input[1] == y:
        return False
    w = consts.get(user.input[1])
    if w is None or w.data_type != TensorProto.FLOAT or len(w.dims) != 2:
        return False
    if list(consts[norm.input[1]].dims) != [w.dims[0]]:
        return False
    nexts = consumers[user.output[0]]
    if user.output[0] in graph_outputs or len(nexts) != 1 or nexts[0].op_type != "Add":
        return False
    bias = [i for i in nexts[0].input if i != user.output[0]]
    b = consts.get(bias[0]) if len(bias) == 1 else None
    return b is not None and b.data_type == TensorProto.FLOAT and list(b.dims) == [w.dims[1]]


def _fold_affine(node: onnx.NodeProto, users: list, consts: dict, consumers: dict, new_inits: dict,
                 folded: dict, fresh: _FreshNames) -> None:
    """Point each MatMul/Add after `node` at diag(gamma) W and b + beta W."""
    gamma = numpy_helper.to_array(consts[node.input[1]]).astype(np.float64)
    beta = numpy_helper.to_array(consts[node.input[2]]).astype(np.float64) if _beta(node) else np.zeros_like(gamma)
    for user in users:
        add = consumers[user.output[0]][0]
        w_name = user.input[1]
        b_name = next(i for i in add.input if i != user.output[0])
        w = numpy_helper.to_array(consts[w_name]).astype(np.float64)
        b = numpy_helper.to_array(consts[b_name]).astype(np.float64)
        # The user and candidate paths share a layer's norm and weights: fold each pair once.
        w_key, b_key = (w_name, node.input[1]), (b_name, w_name, node.input[1], _beta(node))
        if w_key not in folded:
            folded[w_key] = name = fresh.tensor(f"{w_name}/folded")
            new_inits[name] = numpy_helper.from_array((gamma[:, None] * w).astype(np.float32), name)
        if b_key not in folded:
            folded[b_key] = name = fresh.tensor(f"{b_name}/folded")
            new_inits[name] = numpy_helper.from_array((b + beta @ w).astype(np.float32), name)
        w_new, b_new = folded[w_key], folded[b_key]
        user.input[1] = w_new
        add.input[list(add.input).index(b_name)] = b_new


REWRITE_KEY = "onerank.ort_cpu_rewrite"  # metadata of a model file written after the rewrite


def write_ort_cpu_model(source: Path, target: Path) -> Path:
    """The rewrite of `source` as a model file of its own (atomically), for servers that load a file
    as it is: Triton's ONNX Runtime backend on a CPU fleet. `onnx.checker` validates it first."""
    from onerank_export.export.metadata import model_metadata, set_model_metadata
    from onerank_export.export.onnx_files import (
        carry_tables,
        data_file_name,
        load_without_tables,
        save_onnx,
        staging_dir,
    )

    # The rewrite never reads an embedding table: those stay in the data file and are copied file to file.
    model = rewrite_for_ort_cpu(load_without_tables(source), inplace=True)
    set_model_metadata(model, {**model_metadata(model), REWRITE_KEY: "layernorm-as-instancenorm/1"})
    try:  # external data beside `target` when the source needed it; validated on the file either way
        with staging_dir(target) as staging:
            carry_tables(model, Path(source).parent, staging / data_file_name(target))
            save_onnx(model, target, validate=True, infer_shapes=False, staging=staging)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        from onerank_export.errors import StageError

        raise StageError(f"{source}: the CPU rewrite is not a valid model ({str(exc).splitlines()[0]})") from None
    return target
