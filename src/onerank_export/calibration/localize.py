"""Where the INT8 error comes from: quantize one node at a time and measure the score error.

One probe model answers every question in a single ONNX Runtime session: each quantized input
of each quantized node is routed through `Where(probe flag, dequantized value, float value)`, with
one boolean graph input per node. All flags off is the float model, all on is the INT8 model
(fake-quantized), one on isolates that node's contribution. The sum of the single-node errors
need not equal the total (errors interact), but the ranking tells a user what to --keep-float.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper

from onerank_export import spec
from onerank_export.calibration.data import RequestSet
from onerank_export.calibration.graph import initializers
from onerank_export.calibration.result import Localization, NodeError
from onerank_export.export.onnx_files import session_from_proto
from onerank_export.export.ort_session import cpu_session_options, default_threads
from onerank_export.metrics import topk_overlap

FLAG_PREFIX = "probe:"


def build_probe(int8: onnx.ModelProto, fp32: onnx.ModelProto, nodes: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """(probe model, flag input names in `nodes` order)."""
    probe = copy.deepcopy(int8)
    g = probe.graph
    dq_outputs = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    float_nodes = {n.name: n for n in fp32.graph.node}
    fp32_consts, have = initializers(fp32.graph), set(initializers(g))
    by_name = {n.name: n for n in g.node}
    flags, selects = [], []
    for i, name in enumerate(nodes):
        flag = f"{FLAG_PREFIX}{i}"
        g.input.append(helper.make_tensor_value_info(flag, TensorProto.BOOL, []))
        flags.append(flag)
        node = by_name[name]
        for k, x in enumerate(node.input):
            if x not in dq_outputs:
                continue
            original = float_nodes[name].input[k]  # the same input in the fp32 model
            if original in fp32_consts and original not in have:
                g.initializer.append(fp32_consts[original])
                have.add(original)
            chosen = f"{name}/probe_{k}"
            selects.append(helper.make_node("Where", [flag, x, original], [chosen], name=f"{name}/probe_select_{k}"))
            node.input[k] = chosen
    # Keep the graph topologically sorted: each Where goes right before the node that reads it.
    ordered = []
    pending = {s.output[0]: s for s in selects}
    for node in g.node:
        for x in node.input:
            if x in pending:
                ordered.append(pending.pop(x))
        ordered.append(node)
    del g.node[:]
    g.node.extend(ordered)
    return probe, flags


def localize_int8_error(int8: onnx.ModelProto, fp32: onnx.ModelProto, nodes: list[str], requests: RequestSet,
                        topk: int) -> Localization:
    """Per quantized node: score error when only that node is quantized, largest first."""

    probe, flags = build_probe(int8, fp32, nodes)
    opts = cpu_session_options(default_threads())
    session = session_from_proto(probe, opts, ["CPUExecutionProvider"])
    feed = dict(requests.features)
    valid = requests.valid

    def run(on: set[int]) -> np.ndarray:
        switches = {f: np.array(i in on) for i, f in enumerate(flags)}
        return session.run(list(spec.OUTPUT_NAMES), {**feed, **switches})[0]

    base = run(set())
    everything = run(set(range(len(flags))))
    total = float(np.abs(everything - base)[valid].mean())
    measured = []  # (node, mean, max, top-k overlap)
    for i, name in enumerate(nodes):
        scores = run({i})
        err = np.abs(scores - base)[valid]
        measured.append((name, float(err.mean()), float(err.max()),
                         float(topk_overlap(base, scores, valid, k=topk).mean())))
    measured.sort(key=lambda r: -r[1])
    single_sum = sum(r[1] for r in measured) or 1.0
    return Localization(
        method="quantize one node at a time (all others float), score error vs the float probe",
        requests=len(requests),
        topk=topk,
        all_quantized_mean_abs_error=total,
        nodes=tuple(NodeError(name, mean, worst, overlap, mean / single_sum)
                    for name, mean, worst, overlap in measured),
        float_vs_fp32_onnx=_max_diff(base, _float_model_scores(fp32, requests)),
        all_quantized_vs_int8_onnx=_max_diff(everything, _float_model_scores(int8, requests)),
    )


def _float_model_scores(model: onnx.ModelProto, requests: RequestSet) -> np.ndarray:
    from onerank_export.calibration.accuracy import run_onnx

    return run_onnx(model, requests, batch_size=len(requests))


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())
