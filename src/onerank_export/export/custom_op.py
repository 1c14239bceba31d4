"""`onerank::MatchingScore`: the one definition of the custom op.

The ONNX node, its FunctionProto reference body, the kernel and the TensorRT plugin's
name/namespace/version/attributes all come from `MATCHING_SCORE` below (the plugin's C++
header is generated from it; see plugins/matching_score/README.md).

Semantics (see model/scorer.py for the eager reference):
    inputs   z     [B, K, D]     float32 | float16
             r     [B, N, K, D]  same type as z
             valid [B, N]        int32: nonzero = real candidate, 0 = padded candidate
    attrs    scale: float, plugin_namespace: string, plugin_version: string
    output   scores [B, N, K]    float32 = valid != 0 ? sigmoid(scale * sum_d z*r) : 0   (fp32 accumulation)

The mask is int32, not BOOL: a TensorRT plugin cannot take a kBOOL (or kUINT8) tensor
(`PluginTensorDesc::type` in NvInferRuntimePlugin.h, 10.8 and 11.1: "DataType:kBOOL and
DataType::kUINT8 are not supported"), so a BOOL input leaves the engine build no format
combination. int32 rather than the score dtype: it is exact, has no precision question, and fp16
conversion and int8 Q/DQ leave integer tensors alone. Any nonzero value is "valid" (what ONNX's
Cast to BOOL does in the reference body, and the kernel's `!= 0`), so a 0/1 mask and any other
nonzero encoding agree everywhere.

Version 2 (node domain version and plugin version), although version 1 (BOOL mask) never shipped:
a v1 library can still exist wherever the plugin was built from an earlier checkout (a CMake build
directory, a library passed to `build --plugin`, a Triton repository's plugins/), and
under the same name and version the parser would match it and the build would fail late, with no
format combination; a v1 plan would reach a v2 library's enqueue with a one-byte mask. With 2, a
stale library or plan fails at the creator lookup, where TensorRT names name/version/namespace and
the engine builder's registry check (`engine/tensorrt/api.py`) says to rebuild the plugin. The
node carries `plugin_version` because onnx-tensorrt's plugin importer looks up "1" when the
attribute is absent; the creator does not take it as a field (the lookup has matched it).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper


@dataclass(frozen=True)
class OpTensor:
    name: str
    types: tuple[str, ...]  # ONNX element type names accepted
    axes: tuple[str, ...]


@dataclass(frozen=True)
class CustomOpSpec:
    domain: str
    op_type: str
    version: int
    plugin_namespace: str
    plugin_version: str
    inputs: tuple[OpTensor, ...]
    outputs: tuple[OpTensor, ...]
    float_attributes: tuple[str, ...]
    string_attributes: tuple[str, ...]


MATCHING_SCORE = CustomOpSpec(
    domain="onerank",
    op_type="MatchingScore",
    version=2,
    plugin_namespace="onerank",
    plugin_version="2",
    inputs=(
        OpTensor("z", ("FLOAT", "FLOAT16"), ("batch", "num_tasks", "d_model")),
        OpTensor("r", ("FLOAT", "FLOAT16"), ("batch", "num_candidates", "num_tasks", "d_model")),
        OpTensor("valid", ("INT32",), ("batch", "num_candidates")),
    ),
    outputs=(OpTensor("scores", ("FLOAT",), ("batch", "num_candidates", "num_tasks")),),
    float_attributes=("scale",),
    string_attributes=("plugin_namespace",),
)


# Read by onnx-tensorrt's plugin importer to look the creator up (absent = "1"); not a plugin field.
PLUGIN_VERSION_ATTRIBUTE = "plugin_version"


def node_attributes(scale: float) -> dict[str, float | str]:
    """Attributes every MatchingScore node carries."""
    return {"scale": float(scale), "plugin_namespace": MATCHING_SCORE.plugin_namespace,
            PLUGIN_VERSION_ATTRIBUTE: MATCHING_SCORE.plugin_version}


def reference_function(opset: int) -> onnx.FunctionProto:
    """FunctionProto with the standard-op body, so any runtime runs the node without a library."""
    spec = MATCHING_SCORE
    z, r, valid = (t.name for t in spec.inputs)
    (out,) = (t.name for t in spec.outputs)
    scale_attr = helper.make_attribute_ref("value_float", onnx.AttributeProto.FLOAT, ref_attr_name="scale")
    scale_node = helper.make_node("Constant", [], ["scale_value"], name="scale_value")
    scale_node.attribute.append(scale_attr)
    nodes = [
        # Accumulate in fp32 whatever the input precision (the kernel does the same).
        helper.make_node("Cast", [z], ["z_f32"], to=TensorProto.FLOAT, name="cast_z"),
        helper.make_node("Cast", [r], ["r_f32"], to=TensorProto.FLOAT, name="cast_r"),
        helper.make_node("Constant", [], ["axis_1"], value_ints=[1], name="axis_1"),
        helper.make_node("Constant", [], ["axis_last"], value_ints=[-1], name="axis_last"),
        helper.make_node("Unsqueeze", ["z_f32", "axis_1"], ["z_b"], name="broadcast_z"),
        helper.make_node("Mul", ["z_b", "r_f32"], ["prod"], name="multiply"),
        helper.make_node("ReduceSum", ["prod", "axis_last"], ["dot"], keepdims=0, name="dot"),
        scale_node,
        helper.make_node("Mul", ["dot", "scale_value"], ["logit"], name="scale"),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid"),
        # The int32 mask's contract: nonzero = valid (Cast to BOOL is exactly `!= 0`, as in the kernel).
        helper.make_node("Cast", [valid], ["valid_bool"], to=TensorProto.BOOL, name="cast_valid"),
        helper.make_node("Unsqueeze", ["valid_bool", "axis_last"], ["valid_b"], name="broadcast_valid"),
        helper.make_node("Constant", [], ["zero"], value_float=0.0, name="zero"),
        helper.make_node("Where", ["valid_b", "prob", "zero"], [out], name="mask_padding"),
    ]
    return helper.make_function(
        domain=spec.domain,
        fname=spec.op_type,
        inputs=[z, r, valid],
        outputs=[out],
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=[*spec.float_attributes, *spec.string_attributes, PLUGIN_VERSION_ATTRIBUTE],
        doc_string="Reference body of onerank::MatchingScore: valid != 0 ? sigmoid(scale * <z_k, r_k^i>) : 0.",
    )
