"""Which nodes run in reduced precision and which stay in float, with the reason for each.

Selectors (CLI `--keep-float` / `--force-low-precision`) name nodes by exact name
('layers.0.qkv/linear_1/MatMul'), by glob ('layers.1.*'), or by op type ('Softmax'). A selector
that matches nothing is an error: a typo must not silently leave a model unprotected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import onnx

from onerank_export.calibration.graph import FLOAT, initializers
from onerank_export.errors import ConfigError
from onerank_export.export.custom_op import MATCHING_SCORE

# INT8: TensorRT's explicit-quantization pattern - Q/DQ on the inputs of the matmuls.
INT8_OP_TYPES = ("MatMul", "Gemm")
_CUSTOM = MATCHING_SCORE.op_type
INT8_FLOAT_OP_TYPES = {
    "Softmax": "softmax: exponentials of scores, probabilities in [0, 1]",
    "LayerNormalization": "normalisation: mean/variance over the hidden size",
    "Gather": "embedding lookup: table rows are the model's inputs, indices are int64",
    _CUSTOM: "the scorer: its inputs are FLOAT/FLOAT16 by the op spec, accumulates in fp32",
}
RUNTIME_OPERANDS = ("both operands are computed at run time (attention scores and weighted values): symmetric "
                    "int8 wastes the sign bit on probabilities in [0, 1], and ORT CPU cannot fuse them")
# FP16: normalisation, softmax and the reductions that accumulate many terms stay fp32.
FP16_FLOAT_OP_TYPES = {
    "LayerNormalization": "normalisation: variance of squares overflows / loses digits in fp16",
    "Softmax": "softmax: exponent range and the sum of many terms",
    "Exp": "exponent range: e^x overflows fp16 beyond x = 11",
    "ReduceSum": "a reduction: its terms accumulate in fp32 (attention dot products inside a group)",
    "ReduceMean": "mean over the hidden size",
}


@dataclass(frozen=True)
class NodeChoice:
    name: str
    op_type: str
    low_precision: bool  # int8: quantized inputs; fp16: computes in fp16
    reason: str

    def to_dict(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "low_precision": self.low_precision,
                "reason": self.reason}


def match(selectors: Sequence[str], nodes: Sequence[onnx.NodeProto], option: str) -> dict[str, str]:
    """{node name: selector that matched it}; raises ConfigError for a selector matching nothing."""
    out: dict[str, str] = {}
    for sel in selectors:
        hits = [n.name for n in nodes if sel in (n.name, n.op_type) or fnmatchcase(n.name, sel)]
        if not hits:
            example = next((n.name for n in nodes if n.op_type == "MatMul"), nodes[0].name if nodes else "")
            raise ConfigError(f"{option} {sel!r} matches no node (use a node name like '{example}', a glob like "
                              "'layers.1.*' or an op type like 'Softmax')")
        for name in hits:
            out.setdefault(name, sel)
    return out


def int8_plan(model: onnx.ModelProto, keep_float: Sequence[str] = (), force_low: Sequence[str] = ()
              ) -> list[NodeChoice]:
    """Every node that is quantized or deliberately kept in float, with the reason."""
    nodes = list(model.graph.node)
    kept, forced = match(keep_float, nodes, "--keep-float"), match(force_low, nodes, "--force-low-precision")
    consts = initializers(model.graph)
    plan = []
    for node in nodes:
        if node.name in forced and node.op_type == _CUSTOM:
            raise ConfigError(f"--force-low-precision {forced[node.name]!r}: {node.name} cannot be quantized; "
                              f"{INT8_FLOAT_OP_TYPES[_CUSTOM]}")
        default = None
        if node.op_type in INT8_FLOAT_OP_TYPES:
            default = INT8_FLOAT_OP_TYPES[node.op_type]
        elif node.op_type in INT8_OP_TYPES and not any(x in consts for x in node.input[:2]):
            default = RUNTIME_OPERANDS
        elif node.op_type not in INT8_OP_TYPES and node.name not in forced:
            continue  # not a quantization candidate: plain float, nothing to report
        if node.name in kept:
            plan.append(NodeChoice(node.name, node.op_type, False, f"--keep-float {kept[node.name]}"))
        elif node.name in forced:
            plan.append(NodeChoice(node.name, node.op_type, True, f"--force-low-precision {forced[node.name]}"))
        elif default is not None:
            plan.append(NodeChoice(node.name, node.op_type, False, default))
        else:
            plan.append(NodeChoice(node.name, node.op_type, True, "matmul with a constant weight"))
    return plan


def fp16_plan(model: onnx.ModelProto, types: dict[str, int], range_blocked: dict[str, str],
              keep_float: Sequence[str] = (), force_low: Sequence[str] = ()) -> list[NodeChoice]:
    """Every node that computes on float tensors: fp16, or fp32 with the reason."""
    nodes = list(model.graph.node)
    kept, forced = match(keep_float, nodes, "--keep-float"), match(force_low, nodes, "--force-low-precision")
    plan = []
    for node in nodes:
        if not any(types.get(x) == FLOAT for x in (*node.input, *node.output) if x):
            continue
        custom = node.domain not in ("", "ai.onnx")
        if node.name in kept:
            choice = (False, f"--keep-float {kept[node.name]}")
        elif node.name in range_blocked:
            choice = (False, range_blocked[node.name])
        elif custom and node.op_type != _CUSTOM:
            choice = (False, f"custom op {node.domain}::{node.op_type}: its fp16 support is unknown")
        elif node.name in forced:
            choice = (True, f"--force-low-precision {forced[node.name]}")
        elif node.op_type in FP16_FLOAT_OP_TYPES:
            choice = (False, FP16_FLOAT_OP_TYPES[node.op_type])
        elif node.op_type == _CUSTOM:
            choice = (True, "fp16 z and r; the op accumulates in fp32 and returns fp32 scores")
        else:
            choice = (True, "")
        plan.append(NodeChoice(node.name, node.op_type, *choice))
    return plan
