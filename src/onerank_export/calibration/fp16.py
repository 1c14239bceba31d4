"""FP16: a strongly typed fp16 ONNX with fp32 islands, the input TensorRT 10/11 builds as it is.

Which nodes stay fp32 (selection.fp16_plan): normalisation, softmax and long reductions by op
type, plus any node whose activations on the calibration requests exceed `data_max` (NVIDIA
AutoCast's rule and default, 512, leaving headroom under fp16's 65504 for what the data did not
show). Mask values are ignored there: the attention masks hold MASKED_SCORE (-30000, finite
because the candidates' key mask is a GEMM operand) or -inf on purpose; fp16 holds both
exactly, and a masked score only has to stay far below every real one.

The converter rewrites types in one pass: a float tensor is produced in fp16 by an fp16 node
and in fp32 otherwise; a consumer that needs the other type reads one shared Cast (one per
tensor and direction, so casts appear only where the type changes). Initializers are stored in
the type their consumers need (a copy only when both need it). The model's inputs and outputs
keep the serving contract (fp32 cand_features in, fp32 scores out). The MatchingScore node takes
fp16 z and r; its FunctionProto casts to fp32 and accumulates there, its output stays fp32.

The converter is this module's own because onnxconverter-common's float16 converter produced
a model that onnx.checker and ORT rejected (docs/precision.md#library-choice-both-tried).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onerank_export.calibration.graph import FLOAT, FLOAT16, finalize_precision_model, initializers, tensor_types
from onerank_export.calibration.selection import NodeChoice, fp16_plan
from onerank_export.export.custom_op import MATCHING_SCORE
from onerank_export.export.onnx_files import session_from_proto
from onerank_export.export.serving_graph import MASK_FLOOR
from onerank_export.precision import Precision

FP16_MAX = float(np.finfo(np.float16).max)
FP16_TINY = 2.0**-24  # smallest fp16 subnormal: smaller magnitudes flush to 0
TYPE_AGNOSTIC_INPUTS = frozenset({"Shape", "Size", "Cast"})  # read any element type


@dataclass
class Fp16Model:
    proto: onnx.ModelProto
    plan: list[NodeChoice]
    ranges: dict[str, dict[str, float]]  # tensor -> absmax (finite), non-finite and flush-to-zero counts
    casts: int


def activation_ranges(fp32: onnx.ModelProto, batches: Sequence[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Run the fp32 model with every float tensor as an output; per-tensor magnitude statistics."""
    import onnxruntime as ort

    types = tensor_types(fp32)
    probe = copy.deepcopy(fp32)
    existing = {o.name for o in probe.graph.output}
    consts = set(initializers(probe.graph))
    for node in probe.graph.node:
        for out in node.output:
            if types.get(out) == FLOAT and out not in existing and out not in consts:
                probe.graph.output.append(helper.make_tensor_value_info(out, FLOAT, None))
                existing.add(out)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = session_from_proto(probe, opts, ["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    stats = {n: {"absmax": 0.0, "nonfinite": 0, "flushed": 0, "nonzero": 0} for n in names}
    for feed in batches:
        for name, value in zip(names, session.run(names, feed), strict=True):
            _accumulate(stats[name], np.asarray(value))
    for init in fp32.graph.initializer:
        if init.data_type == FLOAT:
            stats[init.name] = {"absmax": 0.0, "nonfinite": 0, "flushed": 0, "nonzero": 0}
            _accumulate(stats[init.name], numpy_helper.to_array(init))
    return stats


def _accumulate(stat: dict[str, float], value: np.ndarray) -> None:
    mag = np.abs(value)
    finite = np.isfinite(mag)
    # Masked scores (MASKED_SCORE plus a real score) are sentinels, not magnitudes to protect.
    mag = np.where(finite & (value > MASK_FLOOR), mag, 0)
    if mag.size:
        stat["absmax"] = max(stat["absmax"], float(mag.max()))
    stat["nonfinite"] += int(mag.size - finite.sum())
    stat["nonzero"] += int(np.count_nonzero(mag))
    stat["flushed"] += int(np.count_nonzero((mag > 0) & (mag < FP16_TINY)))


def range_blocked_nodes(model: onnx.ModelProto, ranges: dict[str, dict[str, float]], data_max: float) -> dict[str, str]:
    """{node: reason} for nodes whose float inputs/outputs exceed the limits on calibration data."""
    consts = set(initializers(model.graph))
    out = {}
    for node in model.graph.node:
        for name in (*node.input, *node.output):
            stat = ranges.get(name)
            if stat is None:
                continue
            limit = FP16_MAX if name in consts else data_max
            if stat["absmax"] > limit:
                what = "initializer" if name in consts else "activation"
                out[node.name] = (f"{what} '{name}' reaches |{stat['absmax']:.4g}| on calibration data "
                                  f"(> {limit:g})")
                break
    return out


def convert_fp16(fp32: onnx.ModelProto, batches: Sequence[dict[str, np.ndarray]], *, data_max: float = 512.0,
                 keep_float: Sequence[str] = (), force_low: Sequence[str] = (),
                 calibration: dict[str, str] | None = None, fp16_io: Collection[str] = ()) -> Fp16Model:
    """`fp16_io`: float inputs and outputs that become fp16 at the interface (the user states between
    the user encoder and the candidate scorer); every other input and output keeps its type."""
    types = tensor_types(fp32)
    unknown = sorted(set(fp16_io) - {v.name for v in (*fp32.graph.input, *fp32.graph.output)
                                     if v.type.tensor_type.elem_type == FLOAT})
    if unknown:
        raise ValueError(f"fp16_io names {unknown}, which are not float inputs or outputs of the model")
    ranges = activation_ranges(fp32, batches)
    plan = fp16_plan(fp32, types, range_blocked_nodes(fp32, ranges, data_max), keep_float, force_low)
    proto, casts = _rewrite(fp32, {c.name for c in plan if c.low_precision}, types, frozenset(fp16_io))
    proto = finalize_precision_model(proto, fp32, Precision.FP16, calibration or {},
                                     {"onerank.fp16.fp32_nodes": str(sum(not c.low_precision for c in plan))})
    return Fp16Model(proto, plan, ranges, casts)


def _wanted_inputs(node: onnx.NodeProto, low: set[str], types: dict[str, int]) -> list[int | None]:
    """Element type each input must have after conversion (None: leave the input alone)."""
    if node.op_type in TYPE_AGNOSTIC_INPUTS:
        return [None] * len(node.input)
    in_low = node.name in low
    wanted: list[int | None] = []
    for i, name in enumerate(node.input):
        if not name or types.get(name) != FLOAT or (node.op_type == MATCHING_SCORE.op_type and i >= 2):
            wanted.append(None)
        else:
            wanted.append(FLOAT16 if in_low else FLOAT)
    return wanted


def _rewrite(fp32: onnx.ModelProto, low: set[str], types: dict[str, int], fp16_io: frozenset[str] = frozenset()
             ) -> tuple[onnx.ModelProto, int]:
    model = copy.deepcopy(fp32)
    g = model.graph
    consts = initializers(g)
    # Float tensors produced in fp16: outputs of fp16 nodes (the scorer's output stays fp32), and the
    # inputs declared fp16.
    produced16 = {out for n in g.node if n.name in low and n.op_type != MATCHING_SCORE.op_type
                  for out in n.output if types.get(out) == FLOAT}
    produced16 |= {v.name for v in g.input if v.name in fp16_io}
    wants = [_wanted_inputs(n, low, types) for n in g.node]  # aligned with g.node
    init_wants: dict[str, set[int]] = {}
    for node, node_wants in zip(g.node, wants, strict=True):
        for name, want in zip(node.input, node_wants, strict=True):
            if want is not None and name in consts:
                init_wants.setdefault(name, set()).add(want)
    renamed = _store_initializers(g, consts, init_wants)

    casts: dict[tuple[str, int], onnx.NodeProto] = {}
    nodes = []
    for node, node_wants in zip(g.node, wants, strict=True):
        for i, (name, want) in enumerate(zip(node.input, node_wants, strict=True)):
            if want is None:
                continue
            if name in consts:
                node.input[i] = renamed.get((name, want), name)
                continue
            have = FLOAT16 if name in produced16 else FLOAT
            if have != want:
                key = (name, want)
                if key not in casts:
                    suffix = "fp16" if want == FLOAT16 else "fp32"
                    casts[key] = helper.make_node("Cast", [name], [f"{name}/{suffix}"], to=want,
                                                  name=f"{name}/cast_{suffix}")
                    nodes.append(casts[key])
                node.input[i] = casts[key].output[0]
        if node.name in low:
            _lower_attributes(node)
        nodes.append(node)
    outputs = {o.name for o in g.output}
    # Each graph output leaves in its interface type: fp32 unless declared fp16.
    nodes += _cast_outputs(nodes, (produced16 & outputs) - fp16_io, FLOAT)
    nodes += _cast_outputs(nodes, (fp16_io & outputs) - produced16, FLOAT16)
    for value in (*g.input, *g.output):
        if value.name in fp16_io:
            value.type.tensor_type.elem_type = FLOAT16
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    g.value_info.extend(inferred.graph.value_info)
    return model, sum(n.op_type == "Cast" and n.name.endswith(("/cast_fp16", "/cast_fp32")) for n in g.node)


def _store_initializers(g: onnx.GraphProto, consts: dict[str, onnx.TensorProto], init_wants: dict[str, set[int]]
                        ) -> dict[tuple[str, int], str]:
    """Convert fp16-only initializers in place; add an fp16 copy where both types are needed."""
    renamed = {}
    for name, wanted in init_wants.items():
        if FLOAT16 not in wanted:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(consts[name]).astype(np.float16), name)
        if wanted == {FLOAT16}:
            consts[name].CopyFrom(half)
        else:
            half.name = f"{name}/fp16"
            g.initializer.append(half)
            renamed[(name, FLOAT16)] = half.name
    return renamed


def _lower_attributes(node: onnx.NodeProto) -> None:
    """Float element types carried by attributes follow the node into fp16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
            attr.i = FLOAT16
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
    if node.op_type == "Constant" and any(a.name in ("value_float", "value_floats") for a in node.attribute):
        attr = next(a for a in node.attribute if a.name in ("value_float", "value_floats"))
        value = np.array(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float16)
        node.attribute.remove(attr)
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))


def _cast_outputs(nodes: list[onnx.NodeProto], names: set[str], to: int) -> list[onnx.NodeProto]:
    """Each graph output in `names` is computed under an internal name and Cast to `to` under its
    public name (fp32 for an output computed in fp16, fp16 for a declared-fp16 one computed in fp32)."""
    extra = []
    have, want = ("fp16", "fp32") if to == FLOAT else ("fp32", "fp16")
    for name in sorted(names):
        internal = f"{name}/{have}"
        for node in nodes:
            node.output[:] = [internal if x == name else x for x in node.output]
            node.input[:] = [internal if x == name else x for x in node.input]
        extra.append(helper.make_node("Cast", [internal], [name], to=to, name=f"{name}/cast_{want}"))
    return extra
