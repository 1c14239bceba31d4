"""Structural checks of the reduced-precision models: what TensorRT's explicit-quantization and
strongly typed paths require, and what this project promises (contract I/O, the custom op).

Each check is a `Verdict` (passed or failed, with a one-line detail); any failure fails the run
like an accuracy gate (the model is not written).

INT8 (TensorRT explicit quantization, "Working with Quantized Types" in its developer guide):
  - QuantizeLinear: INT8 zero point equal to 0, positive finite per-tensor scale;
  - every Q feeds only DequantizeLinear nodes with the same scale and zero point (symmetric pairs);
  - every DQ reads INT8 (no INT32 bias, no UINT8);
  - weights: INT8 initializer -> DQ with per-channel scales on the output-channel axis
    (MatMul B [K, N]: axis 1 / last; Gemm: 0 with transB, else 1);
  - nothing quantized on integer tensors (ids, Gather indices, shapes);
  - nodes kept in float, and the scorer's z / r, read no dequantized tensor.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onerank_export.calibration.graph import (
    FLOAT,
    FLOAT16,
    SHAPE_OPS,
    check_custom_op_intact,
    consumers,
    initializers,
    matching_score_nodes,
    producers,
    tensor_types,
)
from onerank_export.calibration.selection import NodeChoice
from onerank_export.errors import StageError
from onerank_export.export.custom_op import MATCHING_SCORE
from onerank_export.export.onnx_config import TENSORRT_MAX_OPSET, TENSORRT_MIN_QDQ_OPSET
from onerank_export.verdict import Verdict


def _check(name: str, problems: list[str], ok: str) -> Verdict:
    return Verdict.check(name, not problems,
                         ok if not problems else f"{len(problems)} problem(s), first: {problems[0]}")


def check_int8(model: onnx.ModelProto, fp32: onnx.ModelProto, plan: list[NodeChoice]) -> list[Verdict]:
    g = model.graph
    consts, made_by, used_by = initializers(g), producers(g), consumers(g)
    types = tensor_types(model)
    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in g.node if n.op_type == "DequantizeLinear"]

    def const(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(consts[name]) if name in consts else None

    zero_point, scales, pairs = [], [], []
    for q in qs:
        zp = const(q.input[2]) if len(q.input) > 2 else None
        if zp is None or consts[q.input[2]].data_type != TensorProto.INT8 or zp.any():
            zero_point.append(f"{q.name}: zero point must be an INT8 initializer equal to 0")
        scale = const(q.input[1])
        if scale is None or scale.size != 1 or not (np.isfinite(scale).all() and (scale > 0).all()):
            scales.append(f"{q.name}: activation scale must be one positive finite constant")
        for user in used_by.get(q.output[0], []):
            if user.op_type != "DequantizeLinear":
                pairs.append(f"{q.name} feeds {user.op_type} {user.name}, not a DequantizeLinear")
            elif not all(_same(const(a), const(b)) for a, b in zip(q.input[1:], user.input[1:], strict=False)):
                pairs.append(f"{q.name} -> {user.name}: scale / zero point differ")
    dq_int8, per_channel = [], []
    for dq in dqs:
        src = dq.input[0]
        if types.get(src) != TensorProto.INT8:
            dq_int8.append(f"{dq.name} dequantizes {TensorProto.DataType.Name(types.get(src, 0))}, not INT8")
        if src in consts:
            per_channel += _weight_problems(dq, consts, used_by, const)
    integer_q = [f"{q.name} quantizes {q.input[0]} of type {TensorProto.DataType.Name(types.get(q.input[0], 0))}"
                 for q in qs if types.get(q.input[0]) != FLOAT]
    integer_q += [f"{u.name} reads dequantized {dq.output[0]} as input {list(u.input).index(dq.output[0])}"
                  for dq in dqs for u in used_by.get(dq.output[0], [])
                  if u.op_type in ("Gather", "GatherElements", "GatherND") and u.input[0] != dq.output[0]]
    dq_outputs = {o for dq in dqs for o in dq.output}
    float_nodes = {c.name for c in plan if not c.low_precision}
    leaks = [f"{n.name} ({n.op_type}) is kept in float but reads {x}" for n in g.node if n.name in float_nodes
             for x in n.input if x in dq_outputs]
    for node in matching_score_nodes(g):
        for x in node.input[:2]:
            src = _through_shape_ops(x, made_by)
            if src in dq_outputs:
                leaks.append(f"{node.name} input {x} is dequantized int8 ({src})")
    low = {c.name for c in plan if c.low_precision}
    missing = [f"{n.name}: input {x} has no Q/DQ" for n in g.node if n.name in low
               for x in n.input[:2] if x and types.get(x, FLOAT) == FLOAT and x not in dq_outputs]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return [
        _check("q_zero_point_int8_zero", zero_point, f"{len(qs)} QuantizeLinear, all INT8 zero point 0"),
        _check("q_scale_per_tensor", scales, "every activation scale is one positive finite value"),
        _check("qdq_symmetric_pairs", pairs, "every Q feeds DQs with the same scale and zero point"),
        _check("dq_reads_int8", dq_int8, f"{len(dqs)} DequantizeLinear, all from INT8"),
        _check("weights_per_channel", per_channel, "weight DQs per-channel on the output-channel axis"),
        _check("no_qdq_on_integer_tensors", integer_q, "no Q/DQ on ids, indices or shapes"),
        _check("float_nodes_unquantized", leaks, f"{len(float_nodes)} float nodes and the scorer inputs read no DQ"),
        _check("planned_nodes_quantized", missing, f"{len(low)} nodes have Q/DQ on every float input"),
        *_custom_op_checks(model, fp32),
        _check("opset_for_tensorrt",
               [] if TENSORRT_MIN_QDQ_OPSET <= opset <= TENSORRT_MAX_OPSET else [f"opset {opset}"],
               f"ai.onnx opset {opset} (per-channel DQ needs >= {TENSORRT_MIN_QDQ_OPSET}; TensorRT 10 parses "
               f"<= {TENSORRT_MAX_OPSET})"),
    ]


def check_fp16(model: onnx.ModelProto, fp32: onnx.ModelProto, plan: list[NodeChoice],
               fp16_io: Collection[str] = ()) -> list[Verdict]:
    """`fp16_io`: the inputs and outputs declared fp16 (convert_fp16); every other one keeps fp32's type."""
    g = model.graph
    types, made_by = tensor_types(model), producers(g)
    io = [f"{a.name}: {a.type.tensor_type.elem_type} vs {b.type.tensor_type.elem_type}"
          for a, b in zip((*g.input, *g.output), (*fp32.graph.input, *fp32.graph.output), strict=True)
          if a.name != b.name
          or a.type.tensor_type.elem_type != (FLOAT16 if b.name in fp16_io else b.type.tensor_type.elem_type)]
    scorer = []
    for node in matching_score_nodes(g):
        want = FLOAT16 if any(c.name == node.name and c.low_precision for c in plan) else FLOAT
        scorer += [f"{node.name} input {x} is {types.get(x)}" for x in node.input[:2] if types.get(x) != want]
        scorer += [f"{node.name} output is {types.get(node.output[0])}"] if types.get(node.output[0]) != FLOAT else []
    by_name = {n.name: n for n in g.node}
    skip = {"Cast", "Shape", "Size", MATCHING_SCORE.op_type}  # any input type, or checked above
    placement = []
    for choice in plan:
        node = by_name[choice.name]
        if node.op_type in skip:
            continue
        wrong = FLOAT if choice.low_precision else FLOAT16
        placement += [f"{node.name} ({'fp16' if choice.low_precision else 'fp32'}) has {x} in "
                      f"{'fp32' if wrong == FLOAT else 'fp16'}" for x in (*node.input, *node.output)
                      if x and types.get(x) == wrong]
    casts = [n for n in g.node if n.op_type == "Cast"]
    wasteful = [f"{c.name} does not change the type" for c in casts
                if types.get(c.input[0]) == next(a.i for a in c.attribute if a.name == "to")]
    wasteful += [f"{c.name} undoes {made_by[c.input[0]].name}" for c in casts
                 if c.input[0] in made_by and made_by[c.input[0]].op_type == "Cast"
                 and types.get(made_by[c.input[0]].input[0]) == types.get(c.output[0])]
    seen: dict[tuple[str, int], str] = {}
    for c in casts:
        key = (c.input[0], types.get(c.output[0], 0))
        if key in seen:
            wasteful.append(f"{c.name} repeats {seen[key]}")
        seen.setdefault(key, c.name)
    sources = initializers(fp32.graph)
    bad_init = []
    for init in g.initializer:
        source = sources.get(init.name.removesuffix("/fp16"))
        if init.data_type == FLOAT16 and source is not None:
            overflow = ~np.isfinite(numpy_helper.to_array(init)) & np.isfinite(numpy_helper.to_array(source))
            if overflow.any():
                bad_init.append(f"{init.name}: {int(overflow.sum())} finite fp32 values became inf")
    fp32_count = sum(not c.low_precision for c in plan)
    io_ok = "inputs and outputs keep the serving contract's names and types"
    if fp16_io:
        io_ok = f"inputs and outputs keep their names, {len(fp16_io)} of them fp16 as declared, the rest as in fp32"
    return [
        _check("io_contract", io, io_ok),
        *([_check("scorer_fp16_inputs", scorer, "MatchingScore reads fp16 z and r, returns fp32 scores")]
          if matching_score_nodes(fp32.graph) else []),
        _check("plan_respected", placement, f"{len(plan) - fp32_count} nodes in fp16, {fp32_count} in fp32"),
        _check("casts_only_where_types_change", wasteful, f"{len(casts)} Cast nodes, each changes the type once"),
        _check("initializers_fit_fp16", bad_init, "no initializer overflowed to inf in fp16"),
        *_custom_op_checks(model, fp32),
    ]


def _weight_problems(dq: onnx.NodeProto, consts: dict, used_by: dict, const) -> list[str]:
    weight = consts[dq.input[0]]
    scale = const(dq.input[1])
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    rank = len(weight.dims)
    axis = axis + rank if axis < 0 else axis
    out = []
    for user in used_by.get(dq.output[0], []):
        if user.op_type == "MatMul":
            expected = rank - 1
        elif user.op_type == "Gemm":
            expected = 0 if any(a.name == "transB" and a.i for a in user.attribute) else 1
        else:
            continue
        if axis != expected:
            out.append(f"{dq.name}: per-channel axis {axis}, output channels of {user.name} are axis {expected}")
    if scale is None or scale.ndim != 1 or scale.size != weight.dims[axis]:
        out.append(f"{dq.name}: weight scale must be per-channel ({weight.dims[axis]} values on axis {axis})")
    zp = const(dq.input[2]) if len(dq.input) > 2 else None
    if zp is None or consts[dq.input[2]].data_type != TensorProto.INT8 or zp.any():
        out.append(f"{dq.name}: weight zero point must be INT8 zeros")
    return out


def _custom_op_checks(model: onnx.ModelProto, fp32: onnx.ModelProto) -> list[Verdict]:
    """The custom-op check where the fp32 model has the node (not in the user encoder)."""
    if not matching_score_nodes(fp32.graph):
        return []
    try:
        check_custom_op_intact(model, fp32)
    except StageError as exc:
        return [Verdict.check("custom_op_intact", False, str(exc))]
    return [Verdict.check("custom_op_intact", True,
                          "one onerank::MatchingScore node, attributes and FunctionProto as in fp32")]


def _through_shape_ops(tensor: str, made_by: dict[str, onnx.NodeProto]) -> str:
    node = made_by.get(tensor)
    while node is not None and node.op_type in SHAPE_OPS:
        tensor = node.input[0]
        node = made_by.get(tensor)
    return tensor


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool(np.array_equal(a, b))
