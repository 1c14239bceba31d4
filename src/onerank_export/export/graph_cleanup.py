"""Post-export clean-up of the ONNX graph: readable names and weights stored the way MatMul reads them.

The dynamo exporter writes `nn.Linear` as MatMul(x, Transpose(W)) and only folds the transpose
for small weights, naming the folded copy `val_<n>`. Large ones keep a runtime Transpose,
which hides the weight from quantizers (per-channel weight quantization looks for an
initializer on MatMul's B input). Here every Transpose of an initializer is folded and every
MatMul weight is named after its module ("layers.0.qkv.weight_t").
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper


def scope_of(node: onnx.NodeProto) -> str:
    """'layers.0.qkv/linear_1' from the exporter's namespace metadata, '' when absent."""
    namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
    # ": pkg.ServingGraph/model.layers.0.qkv: torch...Linear/linear_1: aten.linear.default"
    parts = [p.split(":")[0].strip() for p in namespace.split("/") if p.strip()]
    parts = [p for p in parts if p and not p.startswith("_empty_nn_module_stack")]
    if not parts:
        return ""
    *modules, op = parts
    scope = re.sub(r"^model\.", "", modules[-1]) if modules else "serving"
    return f"{scope}/{op}"


def fold_initializer_transposes(graph: onnx.GraphProto) -> None:
    inits = {i.name: i for i in graph.initializer}
    consumers = Counter(x for n in graph.node for x in n.input)
    keep = []
    for node in graph.node:
        src = node.input[0] if node.input else ""
        if node.op_type == "Transpose" and src in inits:
            arr = numpy_helper.to_array(inits[src])
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            folded = numpy_helper.from_array(np.ascontiguousarray(np.transpose(arr, perm)), node.output[0])
            graph.initializer.append(folded)
            inits[node.output[0]] = folded
            consumers[src] -= 1
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    _remove_initializers(graph, {name for name, count in consumers.items() if count <= 0 and name in inits})


def _remove_initializers(graph: onnx.GraphProto, names: set[str]) -> None:
    """Delete in place: rebuilding the repeated field would copy every initializer, the item table too."""
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name in names:
            del graph.initializer[index]


def dedupe_initializers(graph: onnx.GraphProto) -> None:
    """One initializer per distinct constant: a weight used by two MatMuls (user and candidate
    paths of a layer) must be stored, and quantized, once."""
    # Bytes are compared only among tensors of one type and shape: the item table (gigabytes, shape
    # of its own) is never copied out of the proto for a key.
    by_shape: Counter[tuple] = Counter((i.data_type, tuple(i.dims)) for i in graph.initializer)
    canonical: dict[tuple, str] = {}
    renames: dict[str, str] = {}
    for init in sorted(graph.initializer, key=lambda i: (bool(re.fullmatch(r"val_\d+", i.name)), i.name)):
        shape_key = (init.data_type, tuple(init.dims))
        if by_shape[shape_key] == 1 or init.data_location == onnx.TensorProto.EXTERNAL:
            continue  # unique, or a table already streamed to the data file (onnx_export.stream_tables)
        key = (*shape_key, numpy_helper.to_array(init).tobytes())
        if key in canonical:
            renames[init.name] = canonical[key]
        else:
            canonical[key] = init.name
    _remove_initializers(graph, set(renames))
    for node in graph.node:
        for i, x in enumerate(node.input):
            node.input[i] = renames.get(x, x)


def name_matmul_weights(graph: onnx.GraphProto) -> None:
    """Give anonymous MatMul weight initializers the name of their module."""
    inits = {i.name: i for i in graph.initializer}
    renames: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        w = node.input[1]
        if w in inits and w not in renames and re.fullmatch(r"val_\d+|transpose_?\d*", w):
            scope = scope_of(node).split("/")[0]
            if scope and scope != "serving":
                renames[w] = f"{scope}.weight_t"
    used = {i.name for i in graph.initializer}
    for old, new in list(renames.items()):
        if new in used:
            del renames[old]
        used.add(new)
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in graph.node:
        for i, x in enumerate(node.input):
            node.input[i] = renames.get(x, x)


def rename_nodes(graph: onnx.GraphProto) -> None:
    """node_MatMul_12 -> 'layers.0.qkv/linear_1/MatMul': module scope, torch op, ONNX op.

    The bulky exporter metadata is dropped afterwards; the name carries what a reader needs.
    """
    seen: Counter[str] = Counter()
    for node in graph.node:
        base = scope_of(node) or "serving"
        name = f"{base}/{node.op_type}"
        seen[name] += 1
        node.name = name if seen[name] == 1 else f"{name}_{seen[name] - 1}"
        del node.metadata_props[:]


def clean_graph(graph: onnx.GraphProto) -> None:
    fold_initializer_transposes(graph)
    dedupe_initializers(graph)
    name_matmul_weights(graph)
    rename_nodes(graph)
