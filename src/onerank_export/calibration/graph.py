"""Small ONNX graph helpers shared by the INT8 and FP16 paths: types, producers, consumers,
metadata and validation."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace

import onnx
from onnx import TensorProto

from onerank_export import __version__
from onerank_export.errors import StageError
from onerank_export.export.custom_op import MATCHING_SCORE
from onerank_export.export.metadata import read_metadata
from onerank_export.precision import Precision

# Ops that move or reshape data without computing on it: a quantized or fp16 value passes through.
SHAPE_OPS = frozenset({"Reshape", "Slice", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Flatten", "Expand"})
FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (inputs, outputs, intermediates, initializers) by strict inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        raise StageError(f"shape inference failed: {str(exc).splitlines()[0]}") from None
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.input, *g.output, *g.value_info)}
    types.update({init.name: init.data_type for init in g.initializer})
    return types


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    return out


def initializers(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    return {init.name: init for init in graph.initializer}


def matching_score_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [n for n in graph.node if n.domain == MATCHING_SCORE.domain and n.op_type == MATCHING_SCORE.op_type]


def finalize_precision_model(model: onnx.ModelProto, fp32: onnx.ModelProto, precision: Precision,
                             calibration: Mapping[str, str], other: Mapping[str, str] | None = None
                             ) -> onnx.ModelProto:
    """Carry the fp32 model's metadata with this precision and how it was made (`calibration`:
    onerank.calibration.*; `other`: full keys), check the custom op survived untouched, validate."""
    precision = Precision(precision)
    source = read_metadata(fp32)
    source = replace(source, other={k: v for k, v in source.other.items() if k.startswith("onerank.")})
    meta = source.with_precision(precision, **calibration)
    replace(meta, other={**meta.other, **(other or {})}).apply(model)
    model.producer_name, model.producer_version = "onerank-export", __version__
    model.doc_string = f"{fp32.doc_string} ({precision})".strip()
    check_custom_op_intact(model, fp32)
    theirs = {(o.domain, o.version) for o in fp32.opset_import}
    ours = {(o.domain, o.version) for o in model.opset_import}
    if ours != theirs:
        raise StageError(f"{precision} model changed the opset imports from {sorted(theirs)} to {sorted(ours)}")
    validate(model, precision)
    return model


def check_custom_op_intact(model: onnx.ModelProto, fp32: onnx.ModelProto) -> None:
    """As many MatchingScore nodes as the fp32 model (one; none in the user encoder), with the fp32
    attributes, and the same FunctionProtos."""
    ours, theirs = matching_score_nodes(model.graph), matching_score_nodes(fp32.graph)
    name = f"{MATCHING_SCORE.domain}::{MATCHING_SCORE.op_type}"
    if len(ours) != len(theirs):
        raise StageError(f"reduced-precision model has {len(ours)} {name} nodes, expected {len(theirs)}")
    if any(list(a.attribute) != list(b.attribute) for a, b in zip(ours, theirs, strict=True)):
        raise StageError(f"{name} node attributes changed during conversion")
    functions = {(f.domain, f.name): f.SerializeToString() for f in model.functions}
    for f in fp32.functions:
        if functions.get((f.domain, f.name)) != f.SerializeToString():
            raise StageError(f"FunctionProto {f.domain}::{f.name} was dropped or changed during conversion")


def validate(model: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise StageError(f"{what} model failed onnx.checker: {str(exc).splitlines()[0]}") from None

