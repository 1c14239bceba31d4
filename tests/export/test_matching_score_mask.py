"""The MatchingScore mask contract (issue 12, defect 1): int32, nonzero = valid, in every precision's ONNX.

TensorRT plugins take no kBOOL or kUINT8 tensor (NvInferRuntimePlugin.h, `PluginTensorDesc::type`), and the
ONNX parser hands the node's inputs to the plugin as they are, so no input of the exported node may be BOOL
or UINT8 in the fp32, fp16 or int8 file. Tiny model, so this runs in the fast tier; the demo files are
checked by the slow tests in test_onnx_export.py and tests/calibration.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import TINY, request
from onnx import TensorProto, helper

from onerank_export.calibration.fp16 import convert_fp16
from onerank_export.calibration.graph import tensor_types
from onerank_export.calibration.int8 import quantize_int8
from onerank_export.export.custom_op import (
    MATCHING_SCORE,
    PLUGIN_VERSION_ATTRIBUTE,
    node_attributes,
    reference_function,
)
from onerank_export.export.onnx_config import OPSET
from onerank_export.model.scorer import matching_score

PLUGIN_REFUSES = {TensorProto.BOOL, TensorProto.UINT8}


@pytest.fixture(scope="module")
def tiny_precisions(tiny_fp32_onnx):
    """{precision: ModelProto} for the tiny model: exported fp32, and its fp16 and int8 (Q/DQ) conversions."""
    path = tiny_fp32_onnx[1]
    batches = [request(TINY, 4, 12, 10, seed=s) for s in range(3)]
    fp32 = onnx.load(str(path))
    return {"fp32": fp32, "fp16": convert_fp16(fp32, batches).proto,
            "int8": quantize_int8(path, batches, method="minmax").proto}


def scorer_input_types(model: onnx.ModelProto) -> list[int]:
    (node,) = [n for n in model.graph.node if (n.domain, n.op_type) == (MATCHING_SCORE.domain, MATCHING_SCORE.op_type)]
    types = tensor_types(model)
    return [types[x] for x in node.input]


def assert_mask_contract(model: onnx.ModelProto, float_type: int) -> None:
    """What the plugin's spec accepts: z and r of one float type, valid INT32; nothing BOOL/UINT8."""
    inputs = scorer_input_types(model)
    assert not PLUGIN_REFUSES & set(inputs), [TensorProto.DataType.Name(t) for t in inputs]
    assert inputs == [float_type, float_type, TensorProto.INT32]
    (fn,) = model.functions
    # The reference body reads the mask only through Cast(to=BOOL), i.e. `valid != 0`, as the kernel does.
    readers = [n for n in fn.node if fn.input[2] in n.input]
    assert [(n.op_type, helper.get_attribute_value(n.attribute[0])) for n in readers] == [("Cast", TensorProto.BOOL)]


@pytest.mark.parametrize("precision, float_type", [("fp32", TensorProto.FLOAT), ("fp16", TensorProto.FLOAT16),
                                                   ("int8", TensorProto.FLOAT)])
def test_the_scorer_node_takes_no_bool_or_uint8_input(tiny_precisions, precision, float_type):
    model = tiny_precisions[precision]
    onnx.checker.check_model(model, full_check=True)
    assert_mask_contract(model, float_type)
    (node,) = [n for n in model.graph.node if n.domain == MATCHING_SCORE.domain]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs[PLUGIN_VERSION_ATTRIBUTE] == MATCHING_SCORE.plugin_version.encode() == b"2"
    assert {o.domain: o.version for o in model.opset_import}[MATCHING_SCORE.domain] == MATCHING_SCORE.version == 2


def test_the_contract_check_fails_on_a_bool_mask(tiny_precisions):
    """The check above is not vacuous: the version-1 graph (BOOL straight into the node) fails it."""
    model = onnx.ModelProto()
    model.CopyFrom(tiny_precisions["fp32"])
    g = model.graph
    (node,) = [n for n in g.node if n.domain == MATCHING_SCORE.domain]
    cast = next(n for n in g.node if n.output[0] == node.input[2])
    assert cast.op_type == "Cast" and helper.get_attribute_value(cast.attribute[0]) == TensorProto.INT32
    node.input[2] = cast.input[0]  # the BOOL `cand_item_ids != 0` itself
    with pytest.raises(AssertionError, match="BOOL"):
        assert_mask_contract(model, TensorProto.FLOAT)


def test_exported_model_scores_like_eager_with_the_int32_mask(tiny_fp32_onnx, tiny_precisions):
    """ORT parity of the whole fp32 graph (FunctionProto body) with the eager model, padding included."""
    model = tiny_fp32_onnx[0]
    feed = request(TINY, 3, 9, 11, seed=7)
    feed["cand_item_ids"][1, 4:] = 0  # padded candidates
    session = ort.InferenceSession(tiny_precisions["fp32"].SerializeToString(), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, feed)
    with torch.no_grad():
        eager = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).scores.numpy()
    assert np.abs(scores - eager).max() <= 1e-5
    assert (scores[1, 4:] == 0.0).all() and (scores[feed["cand_item_ids"] != 0] > 0).all()


def test_reference_body_treats_every_nonzero_int32_as_valid():
    """The FunctionProto (what ORT and a TensorRT without the plugin run) against the eager scorer on bool."""
    node = helper.make_node(MATCHING_SCORE.op_type, ["z", "r", "valid"], ["scores"], domain=MATCHING_SCORE.domain,
                            **node_attributes(0.5))
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 2, "D"]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, ["B", "N", 2, "D"]),
         helper.make_tensor_value_info("valid", TensorProto.INT32, ["B", "N"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "N", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(MATCHING_SCORE.domain, MATCHING_SCORE.version)],
                              functions=[reference_function(OPSET)])
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(1)
    z = rng.normal(size=(1, 2, 8)).astype(np.float32)
    r = rng.normal(size=(1, 9, 2, 8)).astype(np.float32)
    valid = np.array([[0, 1, 2, -1, 7, 256, 65536, np.iinfo(np.int32).min, np.iinfo(np.int32).max]], dtype=np.int32)
    (out,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"z": z, "r": r, "valid": valid})
    ref = matching_score(torch.from_numpy(z), torch.from_numpy(r), torch.from_numpy(valid != 0), 0.5).numpy()
    assert np.abs(out - ref).max() <= 1e-6
    assert (out[0, 0] == 0).all() and (out[0, 1:] > 0).all()
